"""cnnclinic: train CNN image classifiers, diagnose their training pathologies and cure them."""

from cnnclinic.config import Config, load_config
from cnnclinic.errors import UserError

__version__ = "0.1.0"

__all__ = ["Config", "Doctor", "Finding", "Prescription", "UserError", "load_config", "__version__"]


def __getattr__(name: str):
    # The doctor pulls in torch; import it lazily so `cnnclinic --help` stays fast.
    if name in {"Doctor", "Finding", "Prescription"}:
        from cnnclinic import doctor

        return getattr(doctor, name)
    raise AttributeError(name)
