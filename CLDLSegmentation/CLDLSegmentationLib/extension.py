"""What the extension says about itself in Slicer: its repository and contributors (both modules read these).

Written, together with ``CMakeLists.txt``, ``CLDL.json`` and ``CLDL.s4ext``, by
``python scripts/extension_metadata.py --repository OWNER/NAME --contributors "..."`` (see docs/publishing.md).
"""

REPOSITORY = "SlicerCLDL/SlicerCLDL"
CONTRIBUTORS = "CLDL for 3D Slicer contributors"
HOMEPAGE = f"https://github.com/{REPOSITORY}"
