"""The DataVolume controller: CDI's control plane for imports, as a kopf operator.

Work in progress; see the module docstrings of the parts.
"""
