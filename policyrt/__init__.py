"""policyrt: deploy sequence-model robot policies (DT, xLSTM) from a training machine to a robot.

Board-side code (this package, `policyrt.runtime`, `policyrt.controllers`) needs only numpy and pyzmq.
"""

__version__ = "0.1.0"


def load(path, backend: str = "auto", batch_size: int = 1, **options):
    """Open a bundle and return a `Session` on the chosen backend (see `policyrt.runtime.load`)."""
    from policyrt.runtime import load as _load

    return _load(path, backend=backend, batch_size=batch_size, **options)
