"""The official Python client (pip `kubernetes`) against a wasmkube server,
with a kubeconfig as written (TLS, client certificate or token).

usage: client_smoke.py KUBECONFIG admin|viewer|serviceaccount|workloads
"""
import sys

from kubernetes import client, config, watch
from kubernetes.client.rest import ApiException


def main():
    kubeconfig, role = sys.argv[1], sys.argv[2]
    config.load_kube_config(config_file=kubeconfig)
    v1 = client.CoreV1Api()
    version = client.VersionApi().get_code()
    print(f"server {version.git_version}")
    if role == "admin":
        names = [n.metadata.name for n in v1.list_namespace().items]
        print("namespaces: " + " ".join(sorted(names)))
        cm = client.V1ConfigMap(metadata=client.V1ObjectMeta(name="python-cm"), data={"a": "1"})
        v1.create_namespaced_config_map("team", cm)
        print("created python-cm")
        # the client's default patch content type is a strategic merge patch
        v1.patch_namespaced_config_map("python-cm", "team", {"data": {"b": "2"}})
        got = v1.read_namespaced_config_map("python-cm", "team")
        assert got.data == {"a": "1", "b": "2"}, got.data
        print("patched python-cm")
        w = watch.Watch()
        for event in w.stream(v1.list_namespaced_config_map, "team", timeout_seconds=10):
            if event["object"].metadata.name == "python-cm":
                print(f"watched {event['type']} python-cm")
                w.stop()
                break
    elif role == "workloads":
        workloads()
    elif role == "viewer":
        pods = v1.list_namespaced_pod("team")
        print(f"pods: {len(pods.items)}")
        try:
            v1.create_namespaced_config_map(
                "team", client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope")))
            print("create allowed")
        except ApiException as e:
            print(f"create refused: {e.status}")
    else:
        try:
            v1.list_namespaced_pod("team")
            print("list allowed")
        except ApiException as e:
            print(f"list refused: {e.status}")


def workloads():
    """Typed patches, server-side apply, CRDs and custom objects, a watch."""
    apps = client.AppsV1Api()
    dep = {
        "apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "py-web"},
        "spec": {"replicas": 0, "selector": {"matchLabels": {"app": "py"}},
                 "template": {"metadata": {"labels": {"app": "py"}},
                              "spec": {"containers": [{"name": "main", "image": "file:///m.wasm"},
                                                      {"name": "side", "image": "file:///s.wasm"}]}}}}
    apps.create_namespaced_deployment("default", dep)
    # the client's default patch type is a strategic merge patch: one
    # container named, the other kept
    apps.patch_namespaced_deployment("py-web", "default", {
        "spec": {"template": {"spec": {"containers": [
            {"name": "main", "env": [{"name": "A", "value": "1"}]}]}}}})
    got = apps.read_namespaced_deployment("py-web", "default")
    names = [c.name for c in got.spec.template.spec.containers]
    assert names == ["main", "side"], names
    assert got.spec.template.spec.containers[0].env[0].name == "A"
    print("strategic patch kept " + ",".join(names))
    # server-side apply through the dynamic client
    from kubernetes import dynamic
    dyn = dynamic.DynamicClient(client.ApiClient())
    cms = dyn.resources.get(api_version="v1", kind="ConfigMap")
    cfg = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "py-ssa", "namespace": "default"},
           "data": {"a": "1"}}
    cms.server_side_apply(body=cfg, field_manager="python")
    got = cms.get(name="py-ssa", namespace="default")
    managers = [m["manager"] for m in got.metadata.managedFields]
    assert "python" in managers, managers
    print("applied py-ssa as " + ",".join(managers))
    # a CRD, then objects of its kind
    ext = client.ApiextensionsV1Api()
    ext.create_custom_resource_definition({
        "apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": "gadgets.example.com"},
        "spec": {"group": "example.com", "scope": "Namespaced",
                 "names": {"plural": "gadgets", "singular": "gadget", "kind": "Gadget"},
                 "versions": [{"name": "v1", "served": True, "storage": True,
                               "schema": {"openAPIV3Schema": {"type": "object", "properties": {
                                   "spec": {"type": "object", "properties": {
                                       "size": {"type": "integer", "default": 1}}}}}}}]}})
    custom = client.CustomObjectsApi()
    custom.create_namespaced_custom_object("example.com", "v1", "default", "gadgets",
                                           {"apiVersion": "example.com/v1", "kind": "Gadget",
                                            "metadata": {"name": "g1"}, "spec": {}})
    g = custom.get_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g1")
    assert g["spec"]["size"] == 1, g
    custom.patch_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g1",
                                          {"spec": {"size": 5}})
    g = custom.get_namespaced_custom_object("example.com", "v1", "default", "gadgets", "g1")
    assert g["spec"]["size"] == 5, g
    print("custom object g1 size 5")
    w = watch.Watch()
    for event in w.stream(custom.list_namespaced_custom_object, "example.com", "v1", "default",
                          "gadgets", timeout_seconds=10):
        if event["object"]["metadata"]["name"] == "g1":
            print(f"watched {event['type']} g1")
            w.stop()
            break


if __name__ == "__main__":
    main()
