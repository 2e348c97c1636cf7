"""Everything that turns metrics into actions: the replica policy and KEDA scaler, the power-cap sidecar."""
