"""Sparse recovery: objectives, the I-OBS family of solvers, problem generators, estimators."""


def __getattr__(name):
    # The estimators need scikit-learn (the "peers"/"dev" extras): import them only when asked for.
    if name in ("IOBSRegressor", "IOBSClassifier"):
        from iobs.recovery import estimators

        return getattr(estimators, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
