"""The official Python client (pip `kubernetes`) against a wasmkube server,
with a kubeconfig as written (TLS, client certificate or token).

usage: client_smoke.py KUBECONFIG admin|viewer|serviceaccount
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


if __name__ == "__main__":
    main()
