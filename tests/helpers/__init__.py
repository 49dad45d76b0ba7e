"""What several test modules use and is not a fixture (those are in conftest.py).

``training``: train.py's tiny flags and runs; ``workers``: worker processes of
TF_CONFIG for the multi-worker tests; ``caffe_models``: small random Caffe
models for the conversion tests; ``crf_scenes``: a synthetic scene for the
CRF tests.
"""
