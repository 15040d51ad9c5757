"""What a runtime-only install needs: every import of the library is declared, optional ones say what to install.

The full proof is .ci/check_install (a fresh venv, `pip install .`, the quickstart); these are the fast checks
that catch the same mistakes (e.g. safetensors imported by save_run but not declared) in the test suite."""

import ast
import re
import subprocess
import sys
from pathlib import Path

try:
    import tomllib
except ImportError:  # Python 3.10
    tomllib = None

ROOT = Path(__file__).resolve().parents[1]
# import name -> distribution, where they differ
DISTRIBUTION = {"yaml": "pyyaml", "PIL": "pillow"}
# optional packages the library may import only inside a function (lazily), and the modules allowed to
OPTIONAL = {"transformers": {"minitx/interop/bert.py", "minitx/interop/gpt2.py", "minitx/interop/marian.py",
                             "minitx/interop/llama.py"},
            "triton": {"minitx/kernels/", "minitx/bench/report.py", "minitx/bench/compile_report.py",
                       "minitx/bench/compile_table.py"},
            "hypothesis": {"minitx/conformance/"},  # the `check` extra (minitx check draws its inputs with it)
            "pytest": {"minitx/conformance/pytest_plugin.py"}}


def declared() -> set[str]:
    text = (ROOT / "pyproject.toml").read_text()
    if tomllib is not None:
        deps = tomllib.loads(text)["project"]["dependencies"]
    else:
        deps = re.findall(r'^\s*"([^"]+)",?$', text.split("dependencies = [", 1)[1].split("]", 1)[0], re.M)
    return {re.split(r"[<>=!~ \[;]", d, 1)[0].lower() for d in deps}


def imports(path: Path) -> list[tuple[str, bool]]:
    """(top-level package, imported at module level?) for each import in a file."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(n) for n in tree.body} | {id(n) for t in tree.body if isinstance(t, ast.Try) for n in t.body}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name.split(".")[0], id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out.append((node.module.split(".")[0], id(node) in top_level))
    return out


def test_every_runtime_import_is_a_declared_dependency_or_a_lazy_optional_one():
    deps = declared()
    assert "safetensors" in deps  # save_run, the HF and PEFT writers import it
    problems = []
    for path in sorted((ROOT / "minitx").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for name, module_level in imports(path):
            if name in sys.stdlib_module_names or name == "minitx" or DISTRIBUTION.get(name, name) in deps:
                continue
            allowed = OPTIONAL.get(name, set())
            if not any(rel.startswith(a) for a in allowed):
                problems.append(f"{rel}: imports {name!r}, which is neither declared nor an allowed optional import")
            elif module_level and not rel.startswith("minitx/kernels/"):
                problems.append(f"{rel}: imports optional {name!r} at module level (import it lazily)")
    assert not problems, "\n".join(problems)


def test_kernels_without_triton_name_what_to_install():
    code = ("import sys; sys.modules['triton'] = None\n"
            "try:\n    import minitx.kernels.flash_attention\n"
            "except ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert "ERR" in out.stdout and "pip install triton" in out.stdout, out.stdout + out.stderr


def test_ci_runs_the_install_check_before_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    command = 'pip install -e ".[dev]" && python3 -m pytest'
    assert command in readme and command in ci.splitlines()
    assert ci.index("bash .ci/check_install") < ci.index(command)
    check = (ROOT / ".ci" / "check_install").read_text()
    for step in ("--system-site-packages", "pip install -e"):
        assert step not in check  # a venv seeing the global packages, or an editable install, would hide gaps
    for step in ("demo --fast", "finetune", "walk_packages", "transformers", "MINITX_SKIP_VENV_CHECK"):
        assert step in check


def test_the_demo_and_export_are_commands():
    from minitx.cli import COMMANDS
    assert {"demo", "finetune", "export"} <= set(COMMANDS)
