"""One py_test per test file, with what every test needs."""

def sdl_test(name, size = "medium", deps = [], data = [], **kwargs):
    """A test file NAME.py of this package as a py_test.

    Sizes: "medium" (300 s) for most, "large" (900 s) for those that train or run several
    processes; both leave room for a machine whose two cores other jobs load.
    """
    native.py_test(
        name = name,
        size = size,
        srcs = [name + ".py"],
        main = name + ".py",
        python_version = "PY3",
        deps = deps + [
            "//pipelines",
            "//sdl_keras",
            "//tests:testing",
        ],
        data = data + ["//configs"],
        **kwargs
    )
