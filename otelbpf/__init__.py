"""otelbpf: OpenTelemetry traces from unmodified applications, rebuilt from eBPF kernel hooks."""

__version__ = "0.1.0"
