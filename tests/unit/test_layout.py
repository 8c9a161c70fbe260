"""The package's layout: no import cycle between medseg's modules (top-level and lazy imports
alike), and a bad config refused before torch, MONAI or numpy is imported."""
import ast
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

PACKAGE = ROOT / "medseg"


def _import_graph() -> dict[str, set[str]]:
    """``{module: medseg modules it imports}``, from the source (every import statement, also those
    inside functions; the package ``medseg`` itself, which imports nothing eagerly, is left out)."""
    modules = {}
    for f in PACKAGE.rglob("*.py"):
        name = ".".join(f.relative_to(ROOT).with_suffix("").parts)
        modules[name.removesuffix(".__init__")] = f

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name if name and name != "medseg" else None

    graph = {m: set() for m in modules}
    for m, f in modules.items():
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("medseg"):
                names = [resolve(f"{node.module}.{a.name}") or resolve(node.module) for a in node.names]
            elif isinstance(node, ast.Import):
                names = [resolve(a.name) for a in node.names if a.name.startswith("medseg")]
            else:
                continue
            graph[m] |= {n for n in names if n and n != m}
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    found, state = [], {}

    def visit(u, path):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = "done"
    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycle_between_medseg_modules():
    graph = _import_graph()
    assert graph["medseg.config"] and "medseg.plan" in graph["medseg.training.run"]  # the graph is read
    assert _cycles(graph) == []
    assert _cycles({"a": {"b"}, "b": {"a"}}) == [["a", "b", "a"]]  # and a cycle would be found


def test_a_bad_config_is_refused_before_torch_monai_or_numpy_is_imported(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  norm: groupp\n")
    code = ("import sys\nfrom medseg.cli import main\nsys.argv = ['medseg', 'train', '--config', sys.argv[1]]\n"
            "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code)\n"
            "print('loaded', *[m for m in ('torch', 'monai', 'numpy', 'mlflow') if m in sys.modules])\n")
    out = subprocess.run([sys.executable, "-c", code, str(bad)], capture_output=True, text=True, cwd=ROOT)
    assert "exit 2" in out.stdout and "model.norm" in out.stdout + out.stderr
    assert out.stdout.strip().splitlines()[-1] == "loaded", out.stdout
