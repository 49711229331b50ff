"""The one way mlref declares a kfp component.

Every component is a lightweight component on the project image: its body imports the
installed ``mlref`` package, so it runs unchanged in kfp's local SubprocessRunner and in a
cluster pod. kfp is already in the image, so kfp does not pip-install itself at run time.
"""

from collections.abc import Callable

from kfp import dsl

from mlref.settings import get_settings


def component(func: Callable, image: str = "") -> dsl.base_component.BaseComponent:
    """``func`` as a component of the project image (``image`` for one that needs another)."""
    return dsl.component(base_image=image or get_settings().image, install_kfp_package=False)(func)
