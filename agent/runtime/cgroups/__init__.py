"""Container cgroups behind one driver interface, with a cgroup v1 and a cgroup v2 implementation.

    driver = detect()                       # once, at agent start
    driver.create(cid, Resources(memory=512 * MIB, nano_cpus=500_000_000))
    driver.add_process(cid, pid)
    driver.stats(cid); driver.freeze(cid); driver.thaw(cid)
    driver.destroy(cid)

Configuration is plain data (Resources), validated in one place (Resources.validate); every failure
is a CgroupError naming the operation and the path. Each driver is one manager iterating small
per-controller modules (_v1/*.py, _v2/*.py), as runc's libcontainer/cgroups is built.
"""

from ._detect import detect, nesting_parent
from ._devices import ALL_DEVICES, DEFAULT_DEVICE_RULES, DeviceRule
from ._driver import CgroupDriver
from ._dynmods import favor_dynmods
from ._dynmods import release as release_dynmods
from ._errors import CgroupError
from ._resources import MIB, DeviceRate, Resources, Stats
from ._v1 import V1Driver
from ._v2 import V2Driver

__all__ = [
    "ALL_DEVICES",
    "DEFAULT_DEVICE_RULES",
    "MIB",
    "CgroupDriver",
    "CgroupError",
    "DeviceRate",
    "DeviceRule",
    "Resources",
    "Stats",
    "V1Driver",
    "V2Driver",
    "detect",
    "favor_dynmods",
    "nesting_parent",
    "release_dynmods",
]
