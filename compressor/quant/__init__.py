"""Post-training INT8 quantization: the configuration space (``space``), calibration statistics collected once
(``calibrate``), QDQ emission and graph rewrites (``qdq``), target rules (``qdq_rules``), per-layer sensitivity,
the search problem and tuners (``problem``, ``tuner``), the deployment choice (``selection``) and the pass's
algorithm (``quantune``)."""
