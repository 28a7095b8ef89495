"""The paper's figures and tables, scaled to this machine (``iobs reproduce ...``)."""
