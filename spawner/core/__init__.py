"""Pure building blocks every other part uses: one-line problems, sizes, names, strict YAML, the
contract (label keys, state layout, image paths), progress lines and the blocking-call pools."""
