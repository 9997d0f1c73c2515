"""Clones: where a clone's bytes come from (:mod:`.source`), who may take them (:mod:`.token`),
how they are copied (:mod:`.planner` picks the strategy; :mod:`.smart` runs snapshot and CSI
clones; :mod:`.cloner_pod` and :mod:`..pvc_clone` run host-assisted copies), and what a source in
use or not yet populated means (:mod:`.readiness`)."""
