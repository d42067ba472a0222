"""Package stage: device bundles (android, ios, jetson, linux-arm64) with a schema-checked manifest, and safe reading.

(Named `bundle`, not `package`, so that `edgemp.package` can be the function.)
"""

from edgemp.bundle.manifest import SCHEMA_VERSION, schema, validate_manifest
from edgemp.bundle.reader import read_bundle, unpack_bundle
from edgemp.bundle.writer import DEVICES, Bundle, package

__all__ = ["DEVICES", "SCHEMA_VERSION", "Bundle", "package", "read_bundle", "schema", "unpack_bundle",
           "validate_manifest"]
