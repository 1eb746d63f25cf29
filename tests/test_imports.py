"""The import direction of docs/design-notes.md, pinned: who may import whom, and what must stay unloaded.

fleet_cli -> broker_config, edge_protocol (and firmware_bridge, lazily, for the demo's simulators:
docs/design-notes.md); edge_agent -> firmware_bridge, edge_protocol; broker_config -> edge_protocol;
firmware_bridge -> nothing of ours; edge_protocol -> nothing of ours. Nothing imports fleet_cli or edge_agent.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("edge_protocol", "firmware_bridge", "edge_agent", "broker_config", "fleet_cli")
ALLOWED = {
    "edge_protocol": set(),
    "firmware_bridge": set(),
    "broker_config": {"edge_protocol"},
    "edge_agent": {"edge_protocol", "firmware_bridge"},
    "fleet_cli": {"edge_protocol", "broker_config", "firmware_bridge"},
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found & set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_import_direction(package: str) -> None:
    bad = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for imported in _imports(path) - {package} - ALLOWED[package]:
            bad.append(f"{path.relative_to(ROOT)} imports {imported}")
    assert not bad, "\n".join(bad)


def _loaded_after(statement: str) -> set[str]:
    code = f"import sys; {statement}; print('\\n'.join(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    return set(out.stdout.split())


def test_fleet_cli_loads_no_tflite_runtime_and_no_agent() -> None:
    loaded = _loaded_after("import fleet_cli.app")
    assert not {"ai_edge_litert", "tflite_runtime", "edge_agent", "numpy"} & {m.split(".")[0] for m in loaded}


def test_edge_agent_cli_loads_no_typer_rich_or_runtime_at_start() -> None:
    loaded = {m.split(".")[0] for m in _loaded_after("import edge_agent.cli")}
    assert not {"typer", "rich", "fleet_cli", "ai_edge_litert", "tflite_runtime"} & loaded


def test_firmware_bridge_cli_starts_light() -> None:
    loaded = {m.split(".")[0] for m in _loaded_after("import firmware_bridge.cli")}
    assert not {"typer", "rich", "numpy", "fleet_cli", "edge_agent"} & loaded


@pytest.mark.parametrize("package", PACKAGES)
def test_every_module_imports_alone(package: str) -> None:
    """No import cycles: each module can be the first one imported."""
    mods = [
        ".".join(p.relative_to(ROOT).with_suffix("").parts)
        for p in sorted((ROOT / package).rglob("*.py"))
        if p.name != "__main__.py"
    ]
    code = "import importlib, sys\nfor m in sys.argv[1:]:\n    importlib.import_module(m)\n"
    for m in mods:
        proc = subprocess.run(
            [sys.executable, "-c", code, m], check=False, capture_output=True, text=True, timeout=60
        )
        assert proc.returncode == 0, f"{m}: {proc.stderr[-800:]}"


# ---- inside fleet_cli: the layers of docs/architecture.md -------------------------------------------

FLEET_LAYERS = ("commands", "collector", "flash", "demo", "mqtt")
# layer -> the fleet_cli layers it may import (top-level modules such as errors, home, registry,
# terminal, options, sqlite, broker and shipped_model are shared and not listed). Nothing but
# fleet_cli/app.py imports a command module.
FLEET_ALLOWED = {
    "commands": {"collector", "flash", "demo", "mqtt"},
    "collector": {"mqtt"},
    "flash": set(),
    "demo": {"collector", "flash", "mqtt"},
    "mqtt": set(),
}
# What the transport may import of fleet_cli: no fleet home, no registry (fleet_cli.home.mqtt_settings).
MQTT_MAY_IMPORT = {"fleet_cli.errors", "fleet_cli.errors.FleetError"}


def _fleet_imports(path: Path) -> set[str]:
    """Every fleet_cli module ``path`` imports, at any depth of the file (lazy imports included)."""
    tree = ast.parse(path.read_text(), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("fleet_cli")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("fleet_cli"):
            found |= {f"{node.module}.{a.name}" for a in node.names} | {node.module}
    return found


def _layer(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in FLEET_LAYERS else None


def test_fleet_cli_layers() -> None:
    bad = []
    for path in sorted((ROOT / "fleet_cli").rglob("*.py")):
        rel = path.relative_to(ROOT)
        here = _layer(".".join(rel.with_suffix("").parts))
        for imported in _fleet_imports(path):
            there = _layer(imported)
            if there == "commands" and rel != Path("fleet_cli/app.py") and here != "commands":
                bad.append(f"{rel} imports the command module {imported}")
            elif (
                here == "commands"
                and there == "commands"
                and imported.split(".")[2:3] != list(rel.parts[2:3])
            ):
                bad.append(f"{rel} imports another command module, {imported}")
            elif (
                here is not None and there is not None and there != here and there not in FLEET_ALLOWED[here]
            ):
                bad.append(f"{rel} ({here}) imports {imported} ({there})")
            if here == "mqtt" and there is None and imported not in MQTT_MAY_IMPORT | {"fleet_cli"}:
                bad.append(f"{rel} (the transport) imports {imported}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize(
    "statement",
    [
        "import fleet_cli.collector.store",
        "import fleet_cli.commands.export",
        "import fleet_cli.commands.status",
        "import fleet_cli.commands.stats",
        "import fleet_cli.commands.inspect",
    ],
)
def test_reading_the_store_loads_no_transport_and_no_verifier(statement: str) -> None:
    """``fleet export``, ``status``, ``stats`` and ``inspect`` read the store (or one envelope): they load
    neither paho nor the collector's service."""
    loaded = _loaded_after(statement)
    assert "paho" not in {m.split(".")[0] for m in loaded}
    assert not {"fleet_cli.collector.service", "fleet_cli.mqtt.connection"} & loaded
