"""Runs INSIDE a course image with the Jupyter server's Python; prints one ``TEACHLAB-SMOKE {json}`` line.

It finds the default kernel the way the Jupyter server does (the server's own config files), starts
it, and runs code in it that reports the Python version and imports every top-level dependency.
This file must import nothing from Teachlab: it is sent into the container as source text.
"""

import json
import sys

KERNEL_CODE = r'''
import importlib, importlib.metadata as metadata, json, pathlib, platform, sys

def conda_modules(name):
    """Top-level modules a conda package put into site-packages (conda packages need not match a dist)."""
    found = set()
    for record in pathlib.Path(sys.prefix, "conda-meta").glob(name + "-[0-9]*.json"):
        for path in json.loads(record.read_text()).get("files", []):
            parts = pathlib.PurePosixPath(path).parts
            if "site-packages" in parts[:-1]:
                rest = parts[parts.index("site-packages") + 1:]
                if len(rest) == 1 and rest[0].endswith(".py"):
                    found.add(rest[0][:-3])
                elif len(rest) > 1 and rest[1] == "__init__.py":
                    found.add(rest[0])
    return found

def modules_of(name):
    canonical = name.replace("-", "_").lower()
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        modules = conda_modules(name)
        return sorted(modules) if modules else []
    top = (dist.read_text("top_level.txt") or "").split()
    modules = set(top)
    if not modules:
        for path in dist.files or []:
            parts = path.parts
            if parts[0] in ("..", "__pycache__", "bin") or parts[0].endswith((".dist-info", ".egg-info", ".data")):
                continue
            if len(parts) == 1 and parts[0].endswith(".py"):
                modules.add(parts[0][:-3])
            elif len(parts) > 1 and parts[1] == "__init__.py":
                modules.add(parts[0])
    modules = {m for m in modules if not m.startswith("_")}
    if canonical in modules:
        return [canonical]
    return sorted(modules) or [canonical]

report = {"python": platform.python_version(), "executable": sys.executable, "imports": {}}
for name in DISTRIBUTIONS:
    results = {}
    for module in modules_of(name):
        try:
            importlib.import_module(module)
            results[module] = "ok"
        except BaseException as exc:
            results[module] = type(exc).__name__ + ": " + str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    report["imports"][name] = results
print("TEACHLAB-KERNEL " + json.dumps(report))
'''


def main() -> None:
    distributions = json.loads(sys.argv[1])
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import start_new_kernel
    from jupyter_server.serverapp import ServerApp

    app = ServerApp()
    app.load_config_file()
    default_kernel = app.config.MultiKernelManager.get("default_kernel_name", "python3")
    specs = KernelSpecManager(config=app.config).get_all_specs()
    report = {
        "default_kernel": default_kernel,
        "kernels": {name: spec["spec"]["display_name"] for name, spec in specs.items()},
    }
    outputs, errors = [], []

    def collect(message):
        content = message["content"]
        if message["msg_type"] == "stream":
            outputs.append(content["text"])
        elif message["msg_type"] == "error":
            errors.append(f"{content['ename']}: {content['evalue']}")

    kernel_manager, client = start_new_kernel(kernel_name=default_kernel, startup_timeout=120)
    try:
        code = f"DISTRIBUTIONS = {distributions!r}\n" + KERNEL_CODE
        client.execute_interactive(code, timeout=300, output_hook=collect)
    finally:
        client.stop_channels()
        kernel_manager.shutdown_kernel(now=True)
    for line in "".join(outputs).splitlines():
        if line.startswith("TEACHLAB-KERNEL "):
            report["kernel"] = json.loads(line[len("TEACHLAB-KERNEL ") :])
    report["kernel_errors"] = errors
    print("TEACHLAB-SMOKE " + json.dumps(report), flush=True)


if __name__ == "__main__":
    main()
