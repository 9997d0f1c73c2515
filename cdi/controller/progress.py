"""Progress of a running worker, read from its Prometheus endpoint as CDI's controller reads it.

The importer serves ``kubevirt_cdi_import_progress_total{ownerUID="<DataVolume UID>"}`` over
HTTPS on port 8443 with a self-signed certificate (so verification is off: the pod IP is the
identity), and the number already covers every phase: transfer, conversion, resize. Our upload
servers serve ``kubevirt_cdi_upload_progress_total`` the same way on the same port.
"""

from __future__ import annotations

import re
import warnings

import requests
import urllib3

from .importer_pod import METRICS_PORT

_METRIC = r'kubevirt_cdi_(?:import|clone|upload)_progress_total\{ownerUID="%s"\} ([0-9.]+)'


def scrape(pod_ip: str, owner_uid: str, timeout: float = 2.0) -> float | None:
    """The percentage the worker reports, or None if it can't be read right now."""
    url = f"https://{pod_ip}:{METRICS_PORT}/metrics"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", urllib3.exceptions.InsecureRequestWarning)
            response = requests.get(url, verify=False, timeout=timeout)
        response.raise_for_status()
    except requests.RequestException:
        return None
    match = re.search(_METRIC % re.escape(owner_uid), response.text)
    return float(match.group(1)) if match else None


def format_progress(percent: float) -> str:
    """CDI's ``status.progress`` format."""
    return f"{percent:.2f}%"
