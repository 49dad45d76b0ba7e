"""Datasets: list files, label files and checks, the reader, and dataset builders.

Only ``reader`` needs TensorFlow; the label tools stay light.
"""
