"""service.name from a command line, and the order of the rules."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from otelbpf.service_name import UNKNOWN, choose, from_command, interpreter

PY = "python3.11"


@pytest.mark.parametrize(
    ("argv", "exe", "cwd", "name"),
    [
        # Python: scripts, modules, options skipped, code falling through.
        (["python3", "app.py"], PY, "", "app"),
        (["/usr/bin/python3", "/srv/shop/app.py", "--port", "80"], PY, "", "app"),
        (["python3", "-u", "-X", "dev", "-W", "ignore", "app.py"], PY, "", "app"),
        (["python3", "-uB", "-Wignore", "-Xfrozen_modules=off", "worker.py"], PY, "", "worker"),
        (["python3", "--check-hash-based-pycs", "never", "app.py"], PY, "", "app"),
        (["python3", "-m", "shop.api"], PY, "", "shop.api"),
        (["python3", "-u", "-mshop.api", "--reload"], PY, "", "shop.api"),
        (["python3", "-m", "shop.__main__"], PY, "", "shop"),
        (["python3", "-m", "http.server", "8000"], PY, "", "http.server"),
        (["python3", "-c", "import app; app.run()"], PY, "", PY),
        (["python3", "-"], PY, "", PY),
        (["python3"], PY, "", PY),
        (["python3", "--", "app.py"], PY, "", "app"),
        (["python3", "shop/__main__.py"], PY, "", "shop"),
        (["pypy3", "bench.py"], "pypy3", "", "bench"),
        # Python servers: the application, not the runner (shebang scripts run as python SCRIPT ...).
        (["/usr/bin/python3", "/usr/local/bin/gunicorn", "shop.wsgi:app"], PY, "", "shop.wsgi"),
        (
            ["/usr/bin/python3", "/venv/bin/gunicorn", "-w", "4", "-b", "0.0.0.0:8000", "shop.wsgi:app"],
            PY,
            "",
            "shop.wsgi",
        ),
        (["/usr/bin/python3", "/venv/bin/gunicorn", "-k", "gevent", "shop.wsgi"], PY, "", "shop.wsgi"),
        (
            ["/usr/bin/python3", "/venv/bin/gunicorn", "--bind=unix:/run/g.sock", "shop.wsgi:create_app()"],
            PY,
            "",
            "shop.wsgi",
        ),  # fmt: skip
        (["gunicorn: master [shop.wsgi:app]"], PY, "", "shop.wsgi"),  # renamed by setproctitle
        (["gunicorn: worker [shop.wsgi:app]"], PY, "", "shop.wsgi"),
        (
            ["/venv/bin/python", "/venv/bin/uvicorn", "pkg.main:app", "--host", "0.0.0.0", "--port", "80"],
            PY,
            "",
            "pkg.main",
        ),  # fmt: skip
        (["python", "-m", "uvicorn", "--port", "80", "pkg.main:app"], PY, "", "pkg.main"),
        (["python3", "-m", "gunicorn", "shop.wsgi:app"], PY, "", "shop.wsgi"),
        (["/usr/bin/python3", "/usr/local/bin/celery", "-A", "proj", "worker"], PY, "", "proj"),
        (["/usr/bin/python3", "/usr/local/bin/gunicorn"], PY, "", "gunicorn"),  # no app given (a config file)
        # Node.
        (["node", "server.js"], "node", "", "server"),
        (["node", "--max-old-space-size=4096", "-r", "dotenv/config", "api.mjs"], "node", "", "api"),
        # index.js names nothing: the nearest telling directory does (build output skipped).
        (["node", "--inspect", "dist/index.js"], "node", "/srv/shop", "shop"),
        (["node", "/srv/billing/src/main.js"], "node", "", "billing"),
        (["node", "--inspect", "dist/index.js"], "node", "", "index"),  # nothing better known
        (["node", "-e", "require('./app')"], "node", "", "node"),
        (["node"], "node", "", "node"),
        # Java.
        (["java", "-jar", "billing.jar"], "java", "", "billing"),
        (
            ["java", "-Xmx1g", "-Dspring.profiles.active=prod", "-jar", "/opt/billing-service-1.4.2-SNAPSHOT.jar"],
            "java",
            "",
            "billing-service",
        ),  # fmt: skip
        (["java", "-cp", "lib/*:app.jar", "com.acme.Main", "--port", "80"], "java", "", "com.acme.Main"),
        (["java", "--module-path", "mods", "-m", "com.acme/com.acme.Main"], "java", "", "com.acme.Main"),
        (["java", "-version"], "java", "", "java"),
        # Ruby, PHP, Perl.
        (["ruby", "app.rb"], "ruby", "", "app"),
        (["ruby", "-I", "lib", "-r", "bundler/setup", "bin/worker.rb"], "ruby", "", "worker"),
        (["/usr/bin/ruby", "/usr/local/bin/bundle", "exec", "puma", "-p", "3000"], "ruby3.1", "", "puma"),
        (["ruby", "-e", "puts 1"], "ruby", "", "ruby"),
        (["php", "script.php"], "php8.2", "", "script"),
        (["php", "-d", "memory_limit=1G", "-f", "cron.php"], "php", "", "cron"),
        (["php", "-S", "0.0.0.0:8000", "-t", "public"], "php", "", "php"),
        (["perl", "-Ilib", "daemon.pl"], "perl", "", "daemon"),
        # Native programs: the executable's name.
        (["nginx: worker process"], "nginx", "", "nginx"),
        (["/usr/sbin/sshd", "-D"], "sshd", "", "sshd"),
        (["curl", "http://x"], "", "", "curl"),
    ],
)
def test_names_from_command_lines(argv: list[str], exe: str, cwd: str, name: str) -> None:
    assert from_command(argv, exe, cwd) == name


def test_interpreters() -> None:
    names = ("python3.11", "python", "nodejs", "java", "ruby3.1", "php8.2-cli", "perl5.36")
    assert [interpreter(n) for n in names] == ["python", "python", "node", "java", "ruby", "php", "perl"]
    assert interpreter("nginx") == interpreter("pythonista") == ""


@settings(max_examples=2000, deadline=None)
@given(argv=st.lists(st.text(max_size=40), min_size=1, max_size=8), exe=st.text(max_size=20), cwd=st.text(max_size=20))
def test_never_raises_nor_returns_empty(argv: list[str], exe: str, cwd: str) -> None:
    name = from_command(argv, exe, cwd)
    assert isinstance(name, str) and name.strip() == name and name and len(name) <= 255


_WORDS = st.sampled_from(
    ["python3", "node", "java", "-m", "-c", "-jar", "-cp", "-r", "-e", "-X", "-W", "--", "-", "app.py", "index.js",
     "a.jar", "x:y", "gunicorn", "uvicorn", "celery", "-A", "exec", "bundle", "dist", "/", "", " ", "\0"]
)  # fmt: skip


@settings(max_examples=3000, deadline=None)
@given(argv=st.lists(_WORDS, min_size=1, max_size=8), exe=st.sampled_from(["", "python3.11", "node", "java", "ruby"]))
def test_never_raises_on_interpreter_like_command_lines(argv: list[str], exe: str) -> None:
    assert from_command(argv, exe, "/srv")


def test_order_of_the_rules() -> None:
    everything = dict(
        own_service="from-env",
        own_attributes={"service.name": "from-attributes", "team": "core"},
        workload="compose-or-app-label",
        container="container-name",
        argv=["python3", "app.py"],
        exe_name=PY,
    )
    assert choose(**everything) == "from-env"
    assert choose(**{**everything, "own_service": "  "}) == "from-attributes"
    assert choose(**{**everything, "own_service": "", "own_attributes": {"team": "core"}}) == "compose-or-app-label"
    assert choose(**{**everything, "own_service": "", "own_attributes": {}, "workload": ""}) == "container-name"
    no_container = {**everything, "own_service": "", "own_attributes": {}, "workload": "", "container": ""}
    assert choose(**no_container) == "app"
    assert choose(**{**no_container, "argv": []}) == PY
    assert choose(fallback="unknown_service:42") == "unknown_service:42"
    assert choose() == UNKNOWN
