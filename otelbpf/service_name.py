"""service.name for a traced process, from what it says of itself, its container, or its command line.

The order, first that applies:
    1. the process's own ``OTEL_SERVICE_NAME``;
    2. ``service.name`` in its own ``OTEL_RESOURCE_ATTRIBUTES``;
    3. its workload: the compose service, the pod's ``app.kubernetes.io/name`` label, or the pod's owner
       (Deployment, StatefulSet, DaemonSet, Job);
    4. its container's name (Kubernetes' container name under Kubernetes);
    5. for an interpreter, the program it runs (``python3 -m shop.api`` -> ``shop.api``, see from_command);
    6. the executable's name.
otelbpf's own ``OTEL_SERVICE_NAME`` (or ``--service-name``) still overrides them all (otelbpf.resources).
Everything here is pure string work on what /proc or the kernel reported.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence, Set

UNKNOWN = "unknown_service"
_MAX_LEN = 255

# Interpreter executables (by base name) -> the rule that finds the program they run.
_INTERPRETERS = re.compile(r"^(?:(?P<python>python|pypy)[\d.]*[dmu]?|(?P<node>node|nodejs)|(?P<java>java)"
                           r"|(?P<ruby>ruby)[\d.]*|(?P<php>php)[\d.]*(?:-cli)?|(?P<perl>perl)[\d.]*)$")  # fmt: skip
# Script files whose name says nothing of the service: the directory holding them names it better.
_GENERIC_STEMS = {"index", "main", "__main__", "__init__"}
# Directories that say as little: build output, source roots, system places.
_GENERIC_DIRS = {
    "", ".", "..", "/", "app", "apps", "bin", "build", "code", "dist", "home", "js", "lib", "local", "node_modules",
    "opt", "out", "root", "sbin", "server", "src", "srv", "tmp", "usr", "var", "workspace", "www",
}  # fmt: skip
_SCRIPT_SUFFIXES = (".py", ".pyw", ".pyz", ".js", ".mjs", ".cjs", ".ts", ".mts", ".rb", ".php", ".pl", ".jar")
# module:attribute, as gunicorn, uvicorn, hypercorn, daphne and waitress take the application.
_APP_REF = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):[A-Za-z_][\w.]*(?:\(.*\))?$")
_MODULE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
# setproctitle renames gunicorn's processes: "gunicorn: master [shop.wsgi:app]", "gunicorn: worker [...]".
_GUNICORN_TITLE = re.compile(r"^gunicorn: \w+ \[(?P<app>[^\]]+)\]")
# Python servers that run an application named on their command line, and their options taking a value.
_RUNNERS = {"gunicorn", "uvicorn", "hypercorn", "daphne", "waitress-serve", "celery"}
_RUNNER_VALUE_OPTIONS = {
    "-A", "--app", "-b", "--bind", "-c", "--config", "-k", "--worker-class", "-w", "--workers", "--threads",
    "--host", "--port", "--uds", "--fd", "--env-file", "--log-level", "--log-config", "--timeout", "-t",
    "--root-path", "--app-dir", "--name", "-n", "--chdir", "--pythonpath", "-e", "--env", "-p", "--pid", "-u", "-g",
}  # fmt: skip
_NODE_VALUE_OPTIONS = {
    "-r", "--require", "--import", "--loader", "--experimental-loader", "--inspect-port", "--title", "--env-file",
    "--conditions", "-C", "--input-type", "--disable-warning",
}  # fmt: skip
_JAVA_VALUE_OPTIONS = {
    "-cp", "-classpath", "--class-path", "-p", "--module-path", "--upgrade-module-path", "--add-modules",
    "--add-opens", "--add-exports", "--add-reads", "--patch-module", "--limit-modules", "--source",
    "--enable-native-access",
}  # fmt: skip
_JAR_VERSION = re.compile(r"^(?P<name>.+?)-v?\d+(?:\.\d+)*(?:[-.].*)?$")


def _clean(name: str) -> str:
    return name.replace("\0", "").strip()[:_MAX_LEN].strip()


def _base(path: str) -> str:
    return os.path.basename(path.rstrip("/"))


def _stem(path: str) -> str:
    base = _base(path)
    for suffix in _SCRIPT_SUFFIXES:
        if base.endswith(suffix) and len(base) > len(suffix):
            return base[: -len(suffix)]
    return base


def _named_by_directory(path: str, cwd: str) -> str:
    """For a generic script name (index.js, main.py, __main__.py): the nearest telling directory, or ""."""
    if not os.path.isabs(path) and cwd:
        path = os.path.join(cwd, path)
    parts = os.path.normpath(path).split("/")[:-1]
    for part in reversed(parts):
        if part.lower() not in _GENERIC_DIRS:
            return part
    return ""


def _script(path: str, rest: Sequence[str], cwd: str) -> str:
    """The name of a script an interpreter runs; a server runner's application instead of the runner."""
    stem = _stem(path)
    if stem in _RUNNERS:
        return _runner_app(stem, rest) or stem
    if stem in _GENERIC_STEMS:
        return _named_by_directory(path, cwd) or stem
    return stem


def _runner_app(runner: str, args: Sequence[str]) -> str:
    """The application module a Python server runner serves (``gunicorn shop.wsgi:app`` -> ``shop.wsgi``)."""
    if runner == "celery":
        for i, arg in enumerate(args):
            if arg in ("-A", "--app") and i + 1 < len(args):
                return args[i + 1].split(":", 1)[0]
            if arg.startswith(("--app=", "-A")) and len(arg) > 2:
                return arg.split("=", 1)[-1].removeprefix("-A").split(":", 1)[0]
        return ""
    for arg in args:
        m = _APP_REF.match(arg)
        if m:
            return m["module"]
    skip = False
    for arg in args:  # gunicorn also takes a bare module (its "application" attribute)
        if skip:
            skip = False
        elif arg.startswith("-"):
            skip = "=" not in arg and arg in _RUNNER_VALUE_OPTIONS
        else:
            return arg if _MODULE.match(arg) else ""
    return ""


def _python(args: Sequence[str], cwd: str) -> str:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg == "-" or not arg.startswith("-"):
            break
        if arg.startswith("--"):
            i += 2 if arg == "--check-hash-based-pycs" else 1
            continue
        # A cluster of one-letter options (-uB); -c and -m end it, and -W/-X take a value (-Wignore, -W ignore).
        for j in range(1, len(arg)):
            ch = arg[j]
            if ch in "cm":
                value = arg[j + 1 :] or (args[i + 1] if i + 1 < len(args) else "")
                if ch == "c" or not value:
                    return ""  # code on the command line names nothing
                rest = args[i + 1 :] if arg[j + 1 :] else args[i + 2 :]
                module = value.removesuffix(".__main__")
                return (_runner_app(module, rest) or module) if module in _RUNNERS else module
            if ch in "WXQ":
                if not arg[j + 1 :]:
                    i += 1
                break
        i += 1
    if i >= len(args) or args[i] == "-":
        return ""
    return _script(args[i], args[i + 1 :], cwd)


def _first_operand(
    args: Sequence[str], with_value: Set[str], code: Set[str], program: Set[str] = frozenset()
) -> tuple[str, int]:
    """The first word that is not an option (or an option's value), and its index; ("", -1) for code."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg in code:
            return "", -1
        if arg in program:
            return (args[i + 1], i + 1) if i + 1 < len(args) else ("", -1)
        if arg == "-" or not arg.startswith("-"):
            break
        i += 2 if arg in with_value else 1
    if i >= len(args) or args[i] == "-":
        return "", -1
    return args[i], i


def _node(args: Sequence[str], cwd: str) -> str:
    script, i = _first_operand(args, with_value=_NODE_VALUE_OPTIONS, code={"-e", "--eval", "-p", "--print"})
    return _script(script, args[i + 1 :], cwd) if script else ""


def _java(args: Sequence[str], cwd: str) -> str:
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "-jar":
            if i + 1 >= len(args):
                return ""
            stem = _stem(args[i + 1])
            m = _JAR_VERSION.match(stem)  # billing-service-1.4.2.jar -> billing-service
            return m["name"] if m else stem
        if arg in ("-m", "--module"):
            if i + 1 >= len(args):
                return ""
            module, _, main = args[i + 1].partition("/")
            return main or module
        if not arg.startswith("-"):
            return arg  # the main class
        i += 2 if arg in _JAVA_VALUE_OPTIONS else 1
    return ""


def _ruby(args: Sequence[str], cwd: str) -> str:
    script, i = _first_operand(args, with_value={"-I", "-r", "-C", "-E", "-F", "--encoding"}, code={"-e"})
    if _stem(script) == "bundle" and args[i + 1 : i + 2] == ["exec"] and i + 2 < len(args):
        return _stem(args[i + 2])  # bundle exec puma: the program bundler starts
    return _script(script, args[i + 1 :], cwd) if script else ""


def _php(args: Sequence[str], cwd: str) -> str:
    # -S serves a directory, not a script: nothing to name it by here.
    script, i = _first_operand(args, with_value={"-c", "-d", "-z", "-t"}, code={"-r", "-S"}, program={"-f"})
    return _script(script, args[i + 1 :], cwd) if script else ""


def _perl(args: Sequence[str], cwd: str) -> str:
    script, i = _first_operand(args, with_value={"-I", "-M", "-m"}, code={"-e", "-E"})
    return _script(script, args[i + 1 :], cwd) if script else ""


_RULES: dict[str, Callable[[Sequence[str], str], str]] = {
    "python": _python,
    "node": _node,
    "java": _java,
    "ruby": _ruby,
    "php": _php,
    "perl": _perl,
}


def interpreter(name: str) -> str:
    """The interpreter family of an executable name ("python", "node", ...), or ""."""
    m = _INTERPRETERS.match(name.lower())
    if m is None:
        return ""
    return next(kind for kind, value in m.groupdict().items() if value is not None)


def from_command(argv: Sequence[str], exe_name: str = "", cwd: str = "") -> str:
    """Rules 5 and 6: the program an interpreter runs, else the executable's name; never "" for a non-empty argv.

    ``cwd`` places a relative script, so that ``node dist/index.js`` run in /srv/shop is named ``shop``.
    """
    first = argv[0] if argv else ""
    title = _GUNICORN_TITLE.match(first)
    if title:
        app = _APP_REF.match(title["app"])
        return _clean(app["module"] if app else title["app"]) or "gunicorn"
    kind = interpreter(_base(exe_name)) or interpreter(_base(first))
    name = ""
    if kind:
        name = _clean(_RULES[kind](list(argv[1:]), cwd))
    elif _base(first) in _RUNNERS:
        name = _clean(_runner_app(_base(first), list(argv[1:])))
    return name or _clean(_base(exe_name)) or _clean(_base(first)) or _clean(first) or UNKNOWN


def choose(
    *,
    own_service: str = "",
    own_attributes: Mapping[str, str] | None = None,
    workload: str = "",
    container: str = "",
    argv: Sequence[str] = (),
    exe_name: str = "",
    cwd: str = "",
    fallback: str = UNKNOWN,
) -> str:
    """service.name by the module's rules 1-6; ``fallback`` when nothing at all is known of the process.

    own_service and own_attributes: the process's OTEL_SERVICE_NAME and parsed OTEL_RESOURCE_ATTRIBUTES.
    """
    for name in (own_service, (own_attributes or {}).get("service.name", ""), workload, container):
        if _clean(name):
            return _clean(name)
    if argv or exe_name:
        return from_command(argv, exe_name, cwd)
    return fallback
