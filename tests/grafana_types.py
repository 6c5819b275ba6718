"""Grafana's own published types (npm `@grafana/schema`, versioned with Grafana) and the TypeScript compiler, used to
type-check our JSON against them.

The packages are installed once per version into a cache outside the repository (`$XDG_CACHE_HOME` or ~/.cache,
`ingest-tests/npm/...`); nothing of them enters the repo. Each check is one TypeScript file of `const` declarations,
one per checked value (`const NAME: TYPE = <JSON>;`), compiled with `tsc --noEmit`; the compiler's errors are
mapped back to the declaration they fall in. The TypeScript beside this file is copied next to each check:
tests/json_types.ts (how JSON meets Grafana's enums and defaults) and tests/clickhouse_query.ts (the plugin's query
model).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .harness.tools import require_tool
from .stack import compose

# The compiler @grafana/schema 12.4.11 is built with (its package.json devDependencies); a test keeps them equal.
TYPESCRIPT = "5.9.2"
HELPERS = sorted(Path(__file__).parent.glob("*.ts"))
COMPOSABLE = "@grafana/schema/dist/esm/raw/composable"
# Panel plugin ids whose schema folder is named otherwise (Grafana's panel ids vs. the package's folders).
PANEL_FOLDERS = {"annolist": "annotationslist", "dashlist": "dashboardlist"}


def grafana_version() -> str:
    """The Grafana version the stack pins (docker-compose.yml); @grafana/schema has the same version numbers."""
    return compose()["services"]["grafana"]["image"].rpartition(":")[2]


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "ingest-tests" / "npm"


def packages() -> Path:
    """A directory whose node_modules holds @grafana/schema (the pinned Grafana's) and typescript, exact versions."""
    npm = require_tool("npm")
    wanted = {"@grafana/schema": grafana_version(), "typescript": TYPESCRIPT}
    target = _cache_root() / "-".join(f"{name.replace('/', '+')}@{v}" for name, v in sorted(wanted.items()))
    if (target / "installed.json").is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".install-", dir=target.parent))
    try:
        (staging / "package.json").write_text(json.dumps({"private": True, "dependencies": wanted}))
        result = subprocess.run([npm, "install", "--ignore-scripts", "--no-audit", "--no-fund", "--save-exact",
                                 "--loglevel=error"], cwd=staging, capture_output=True, text=True, timeout=600)
        if result.returncode != 0:
            raise RuntimeError(f"npm install {wanted} failed:\n{result.stdout}{result.stderr}")
        for name, version in wanted.items():
            got = json.loads((staging / "node_modules" / name / "package.json").read_text())["version"]
            if got != version:
                raise RuntimeError(f"npm installed {name} {got}, wanted {version}")
        (staging / "installed.json").write_text(json.dumps(wanted))
        if target.exists() and not (target / "installed.json").is_file():
            shutil.rmtree(target, ignore_errors=True)  # left half-done by an interrupted run
        try:
            staging.rename(target)
        except OSError:  # another run installed it meanwhile
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def panel_module(panel_type: str, installed: Path) -> str | None:
    """The import path of a panel plugin's Options/FieldConfig types in @grafana/schema, or None."""
    folder = PANEL_FOLDERS.get(panel_type, panel_type.lower().replace("-", ""))
    exports = json.loads((installed / "node_modules" / "@grafana" / "schema" / "package.json").read_text())["exports"]
    for key in exports:
        if key.startswith(f"./dist/esm/raw/composable/{folder}/panelcfg/x/"):
            return "@grafana/schema" + key[1:]
    return None


@dataclass
class Declaration:
    """One checked value: `const name: type = value;`."""

    name: str
    type: str
    value: object
    where: str  # shown in failures: file and path of the value


@dataclass
class CompileError:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class TypeCheck:
    """A TypeScript file of declarations against Grafana's types, compiled with tsc."""

    def __init__(self, installed: Path) -> None:
        self.installed = installed
        self.imports: dict[str, str] = {}  # alias -> module
        self.declarations: list[Declaration] = []

    def module(self, alias: str, module: str) -> str:
        self.imports[alias] = module
        return alias

    def declare(self, type_: str, value: object, where: str) -> None:
        name = f"v{len(self.declarations)}_" + re.sub(r"\W+", "_", where)[:60]
        self.declarations.append(Declaration(name, type_, value, where))

    def source(self) -> tuple[str, list[tuple[int, Declaration]]]:
        lines = [f'import type * as {alias} from "{module}";' for alias, module in sorted(self.imports.items())]
        lines.append('import type { Json, Options, Custom, FieldConfigPatch } from "./json_types";')
        starts = []
        for d in self.declarations:
            starts.append((len(lines) + 1, d))
            lines.extend(f"const {d.name}: {d.type} = {json.dumps(d.value, indent=1)};".splitlines())
        return "\n".join(lines) + "\n", starts

    def run(self) -> list[CompileError]:
        """Compile; every compiler error, attributed to the declaration it falls in."""
        text, starts = self.source()
        work = Path(tempfile.mkdtemp(prefix="check-", dir=self.installed))
        try:
            (work / "check.ts").write_text(text)
            for helper in HELPERS:
                shutil.copy(helper, work / helper.name)
            (work / "tsconfig.json").write_text(json.dumps({
                "compilerOptions": {"strict": True, "noEmit": True, "target": "es2022", "module": "esnext",
                                    "moduleResolution": "bundler", "skipLibCheck": True, "types": []},
                "files": ["check.ts"]}))
            node = require_tool("node")
            tsc = self.installed / "node_modules" / "typescript" / "bin" / "tsc"
            result = subprocess.run([node, str(tsc), "-p", str(work / "tsconfig.json"), "--pretty", "false"],
                                    capture_output=True, text=True, timeout=300)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        errors, other = [], []
        for line in (result.stdout + result.stderr).splitlines():
            m = re.match(r"(?:.*[/\\])?(\w+)\.ts\((\d+),\d+\): error (TS\d+: .*)", line)
            if m and m[1] == "check":
                owner = max((s for s in starts if s[0] <= int(m[2])), key=lambda s: s[0], default=None)
                errors.append(CompileError(owner[1].where if owner else "imports", m[3]))
            elif m:  # an error in a helper file: reported as such, never dropped
                errors.append(CompileError(f"{m[1]}.ts line {m[2]}", m[3]))
            elif line.startswith(" ") and errors:  # a message's continuation lines
                errors[-1].message += "\n" + line
            elif line.strip():
                other.append(line)
        if other or (result.returncode != 0 and not errors):
            raise RuntimeError("tsc reported what no declaration explains:\n" + "\n".join(other))
        return errors
