"""Caffe's file formats without Caffe or protoc.

* ``wire``: the protobuf wire format of .caffemodel files, read and written;
* ``prototxt``: deploy prototxts written from our network, and read to check
  a released one;
* ``convert``: Caffe layers to this network's variables and back, and
  convert.py's work.
"""
