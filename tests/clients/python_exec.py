"""The Python client's exec (WebSocket v4/v5 channels) through the apiserver to a node.

Usage: python_exec.py KUBECONFIG POD CONTAINER. Prints the command's stdout.
"""
import sys

from kubernetes import client, config
from kubernetes.stream import stream

config.load_kube_config(config_file=sys.argv[1])
core = client.CoreV1Api()
out = stream(core.connect_get_namespaced_pod_exec, sys.argv[2], "default", container=sys.argv[3],
             command=["echo", "from", "python"], stderr=True, stdin=False, stdout=True, tty=False)
print(out, end="")
