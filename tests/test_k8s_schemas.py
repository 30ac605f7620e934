"""Every manifest in launch/k8s validated against the schema its API server would use, strictly:
types, required fields, enums, and no field the schema does not know (kubectl's default
server-side field validation, `--validate=strict`, rejects those too).

- Custom resources (TrainJob, PyTorchJob) against the openAPIV3Schema of their CustomResourceDefinition,
  vendored in tests/data/k8s-crds (see its README), with jsonschema. The CRDs' CEL rules
  (x-kubernetes-validations) are not evaluated; tests/test_launch.py checks what they would.
- Built-in kinds (the batch/v1 Job) against Kubernetes' own OpenAPI schemas, which the
  kubernetes-validate package ships per Kubernetes release.

Each kind also has a negative control: the same manifest with an unknown field, or without a
required one, must fail, so the validation cannot pass by accepting anything.
"""

from __future__ import annotations

import copy
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "launch" / "k8s"
CRDS = ROOT / "tests" / "data" / "k8s-crds"
CRD_FILES = ("trainer.kubeflow.org_trainjobs.yaml", "kubeflow.org_pytorchjobs-v1.7.yaml")
MANIFESTS = sorted(K8S.glob("*.yaml"))


def strict(schema: dict) -> dict:
    """An openAPIV3Schema as the API server applies it: an object with declared properties takes no
    other field unless it says x-kubernetes-preserve-unknown-fields (JSON Schema allows them)."""
    node = copy.copy(schema)
    if "properties" in node:
        node["properties"] = {name: strict(sub) for name, sub in node["properties"].items()}
        if "additionalProperties" not in node and not node.get("x-kubernetes-preserve-unknown-fields"):
            node["additionalProperties"] = False
    if isinstance(node.get("additionalProperties"), dict):
        node["additionalProperties"] = strict(node["additionalProperties"])
    if isinstance(node.get("items"), dict):
        node["items"] = strict(node["items"])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in node:
            node[key] = [strict(sub) for sub in node[key]]
    return node


def crd_schemas() -> dict[tuple[str, str], dict]:
    """(apiVersion, kind) -> the strict schema of every served version of the vendored CRDs."""
    schemas = {}
    for name in CRD_FILES:
        for document in yaml.safe_load_all((CRDS / name).read_text()):
            if not document or document.get("kind") != "CustomResourceDefinition":
                continue
            spec = document["spec"]
            for version in spec["versions"]:
                if version.get("served"):
                    key = (f"{spec['group']}/{version['name']}", spec["names"]["kind"])
                    schemas[key] = strict(version["schema"]["openAPIV3Schema"])
    return schemas


SCHEMAS = crd_schemas()


def validation_errors(resource: dict) -> list[str]:
    """Everything wrong with the resource, as messages; [] when it is valid."""
    key = (resource["apiVersion"], resource["kind"])
    if key in SCHEMAS:
        validator = jsonschema.Draft4Validator(SCHEMAS[key])
        return [f"{'.'.join(map(str, e.absolute_path)) or '(top)'}: {e.message}" for e in validator.iter_errors(resource)]
    try:
        kubernetes_validate.validate(resource, kubernetes_validate.latest_version(), strict=True)
    except kubernetes_validate.ValidationError as error:  # the first error only
        return [str(error).split("\n", 1)[0]]
    except kubernetes_validate.SchemaNotFoundError:
        pytest.fail(f"no schema for {key}: vendor its CRD into tests/data/k8s-crds")
    return []


def load(path: Path) -> dict:
    (document,) = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    return document


def test_the_crds_are_the_ones_the_manifests_need():
    assert {("trainer.kubeflow.org/v1alpha1", "TrainJob"), ("kubeflow.org/v1", "PyTorchJob")} <= set(SCHEMAS)
    kinds = {(load(p)["apiVersion"], load(p)["kind"]) for p in MANIFESTS}
    assert kinds == {("trainer.kubeflow.org/v1alpha1", "TrainJob"), ("kubeflow.org/v1", "PyTorchJob"),
                     ("batch/v1", "Job")}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid_against_its_schema(path):
    assert validation_errors(load(path)) == []


def first_container(resource: dict) -> dict:
    spec = resource["spec"]
    if resource["kind"] == "TrainJob":
        return spec["trainer"]
    if resource["kind"] == "PyTorchJob":
        return spec["pytorchReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]
    return spec["template"]["spec"]["containers"][0]


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_unknown_fields_fail_validation_at_any_depth(path):
    misspelt_top = load(path)
    misspelt_top["spec"]["replica"] = 2
    assert any("replica" in e for e in validation_errors(misspelt_top))
    misspelt_deep = load(path)
    first_container(misspelt_deep)["argz"] = ["x"]
    assert any("argz" in e for e in validation_errors(misspelt_deep))
    wrong_type = load(path)
    first_container(wrong_type)["args"] = "not a list"
    assert validation_errors(wrong_type)


def test_a_trainjob_without_its_runtime_fails_validation():
    job = load(K8S / "trainjob.yaml")
    del job["spec"]["runtimeRef"]
    assert any("runtimeRef" in e for e in validation_errors(job))
    job = load(K8S / "trainjob.yaml")
    job["spec"]["runtimePatches"][0].pop("manager")
    assert any("manager" in e for e in validation_errors(job))
