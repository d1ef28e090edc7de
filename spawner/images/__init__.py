"""Course images: build plans (``plan``), builds on the engine (``build``), the smoke test, the version
registry and publishing (build, smoke-test, version, make current, roll back)."""
