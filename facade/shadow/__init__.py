"""Shadow traffic: mirroring, comparison, noise, store, recorder, reports, replay."""
