"""The architecture the README states, read from the code itself: which side imports what.

- ``cluster`` (the library) never imports ``jobs`` (the trainer), ``hydra_plugins``, Hydra or OmegaConf.
- Every module of ``cluster`` outside ``cluster/runtime/`` is the torch-free side: it imports neither torch
  nor the runtime, so a login node submits without paying 2-4 s for torch.
- ``jobs`` never imports ``hydra_plugins``; no import cycles anywhere; no module over 400 lines.
- Another library's private names are reached only from its compat module.
"""

import ast
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers import REPO

PACKAGES = ("cluster", "jobs", "hydra_plugins")
FIRST_PARTY = (*PACKAGES, "tests")
COMPAT = {"cluster.submitit_compat", "cluster.runtime.dcp_compat", "hydra_plugins.clusterjobs_launcher.hydra_compat",
          "hydra_plugins.clusterjobs_launcher.omegaconf_compat"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for package in PACKAGES for path in sorted((REPO / package).rglob("*.py"))}


def imports(path: Path) -> set[str]:
    """Every module ``path`` imports, at any depth of the file (late imports count too)."""
    found = set()
    package = module_name(path).rpartition(".")[0] if path.name != "__init__.py" else module_name(path)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def first_party(name: str) -> str | None:
    """The module of ours that ``name`` is (or is inside), or None."""
    while name:
        if name in MODULES:
            return name
        name = name.rpartition(".")[0]
    return None


def is_torch_free_side(module: str) -> bool:
    return module.startswith("cluster") and not module.startswith("cluster.runtime")


def test_the_tree_holds_the_modules_the_readme_names():
    assert {"cluster.runtime.process_group", "cluster.slurm.sbatch", "cluster.sweep.manifest", "cluster.rundir",
            "cluster.local.ranks", "jobs.settings", "jobs.plan", "jobs.fingerprint"} <= set(MODULES)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_no_edge_against_the_layering(module):
    edges = imports(MODULES[module])
    roots = {edge.split(".")[0] for edge in edges}
    if module.startswith("cluster"):
        assert not roots & {"jobs", "hydra_plugins", "hydra", "omegaconf"}, f"{module} reaches the trainer or Hydra"
    if is_torch_free_side(module):
        assert "torch" not in roots, f"{module} is on the torch-free side but imports torch"
        assert not any(edge.startswith("cluster.runtime") for edge in edges), f"{module} imports the runtime"
    if module.startswith("jobs"):
        assert "hydra_plugins" not in roots, f"{module} reaches the Hydra plugin"


@pytest.mark.parametrize("module", sorted(MODULES))
def test_private_names_of_other_libraries_only_in_compat_modules(module):
    if module in COMPAT:
        return
    private = sorted(edge for edge in imports(MODULES[module]) if edge.split(".")[0] not in FIRST_PARTY
                     and any(part.startswith("_") and not part.startswith("__") for part in edge.split(".")))
    assert not private, f"{module} uses private API {private}; reach it through a compat module"


def test_no_import_cycles():
    graph = {module: {first_party(edge) for edge in imports(path)} - {None, module} for module, path in MODULES.items()}
    # a package's __init__ seen from its own modules is not a cycle to worry about here: ours are empty
    state: dict[str, int] = {}
    cycles = []

    def visit(module: str, trail: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph[module]):  # type: ignore[type-var]
            if state.get(target) == 1:
                cycles.append(trail[trail.index(target):] + [target])
            elif target not in state:
                visit(target, trail + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not cycles, f"import cycles: {cycles}"


def test_no_module_over_400_lines():
    paths = [p for p in REPO.rglob("*.py") if ".venv" not in p.parts and "outputs" not in p.parts]
    long = {str(p.relative_to(REPO)): n for p in paths if (n := len(p.read_text().splitlines())) > 400}
    assert not long, long


def test_the_torch_free_side_imports_without_torch_in_a_fresh_interpreter():
    modules = sorted(m for m in MODULES if is_torch_free_side(m) and not m.endswith("__main__"))  # entry points run
    assert len(modules) > 20
    code = ("import importlib, json, sys\n"
            f"for name in {modules!r}: importlib.import_module(name)\n"
            "print(json.dumps(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.'))))")
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [], "the torch-free side loaded torch"


def test_a_rank_imports_no_hydra():
    """Hydra stays at the edge: a rank (``jobs.task``, what submitit's runner calls) reads a plan of dataclasses,
    and importing Hydra would cost every rank's start 0.2 s of CPU."""
    code = "import sys, jobs.task\nprint(sorted(m for m in sys.modules if m.split('.')[0] == 'hydra'))"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "[]", done.stdout + done.stderr


def config_keys() -> set[str]:
    """Every config key of the trainer (``train.steps``, ``cluster.partition``, ...) and Hydra's that it names."""
    import dataclasses

    from jobs import data, models, settings

    groups = {"model": models.TransformerSettings, "model ": models.MLPSettings, "model  ": models.CNNSettings,
              "model   ": models.GPTSettings, "data": data.SyntheticSettings, "data ": data.CIFAR10Settings,
              "data  ": data.TextSettings, "data   ": settings.DataSplit, "optim": settings.OptimConfig,
              "strategy": settings.StrategyConfig, "cluster": settings.SlurmCluster,
              "distributed": settings.DistributedConfig, "train": settings.TrainConfig, "requeue": settings.Requeue}
    keys = {f"{group.strip()}.{field.name}" for group, cls in groups.items() for field in dataclasses.fields(cls)}
    return keys | {"cluster.tasks_per_node", "hydra.run.dir", "hydra.sweep.dir", "hydra.launcher", "model._target_",
                   "data._target_", "loss._target_"}


CONFIG_KEY = re.compile("|".join(rf"(?<![\w.]){re.escape(key)}(?![\w])" for key in sorted(config_keys()))
                        + r"|(?<![\w.])(?:model|strategy|cluster|data|optim)=[a-z]")


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m.startswith("cluster")))
def test_the_library_names_no_config_key_of_the_trainer(module):
    """A user calling the library from their own script must not be told to set ``cluster.partition=``."""
    tree = ast.parse(MODULES[module].read_text())
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    texts = [node.value for node in ast.walk(tree)  # messages, not the docs that explain the trainer's use
             if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings]
    found = sorted({match for text in texts for match in CONFIG_KEY.findall(text)})
    assert not found, f"{module} speaks the trainer's config keys: {found}"


PUBLIC_RUNTIME = {"cluster.runtime.job", "cluster.runtime.loader", "cluster.runtime.rng"}  # cluster.__init__'s


@pytest.mark.parametrize("module", ["jobs.task", "jobs.loop"])
def test_the_trainers_loop_uses_only_the_public_api_of_the_runtime(module):
    """The built-in trainer is one user of ``cluster.start``: what it needs, a user's loop can have."""
    import cluster

    used = {name for name in imports(MODULES[module]) if name in MODULES and name.startswith("cluster.runtime")}
    assert used <= PUBLIC_RUNTIME, f"{module} reaches past the public API: {sorted(used - PUBLIC_RUNTIME)}"
    assert {cluster._PUBLIC[name] for name in ("start", "ResumableLoader", "seed_everything")} == PUBLIC_RUNTIME  # noqa: SLF001
