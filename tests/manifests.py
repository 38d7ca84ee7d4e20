"""The Kubernetes manifests as `kubectl apply -f manifests/` reads them: for the tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

MANIFESTS = Path(__file__).resolve().parent.parent / "manifests"

Doc = dict[str, Any]


def applied_files() -> list[Path]:
    """What `kubectl apply -f manifests/` reads: the folder's own .yaml/.yml/.json files."""
    return sorted(p for p in MANIFESTS.iterdir() if p.suffix in {".yaml", ".yml", ".json"})


def load(path: Path) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def load_text(text: str) -> list[Doc]:
    return [doc for doc in yaml.safe_load_all(text) if doc is not None]


def applied() -> list[Doc]:
    docs = []
    for path in applied_files():
        for doc in load(path):
            assert doc.get("kind"), f"{path.name}: `kubectl apply -f` fails on an object of no kind"
            assert doc.get("metadata", {}).get("name"), (
                f"{path.name}: `kubectl apply -f` fails on a {doc['kind']} with no name"
            )
            docs.append(doc)
    return docs


def one(docs: list[Doc], kind: str, name: str | None = None) -> Doc:
    found = [
        doc
        for doc in docs
        if doc["kind"] == kind and (name is None or doc["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def deployment() -> Doc:
    return one(applied(), "Deployment", "notifyworker")


def migrate_job() -> Doc:
    return one(applied(), "Job")


def settings_data() -> dict[str, str]:
    data: dict[str, str] = one(applied(), "ConfigMap", "notifyworker")["data"]
    return data


def container(workload: Doc) -> Doc:
    containers: list[Doc] = workload["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]
