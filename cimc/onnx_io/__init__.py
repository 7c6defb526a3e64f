"""ONNX in and out: the importer reads models into Graphs; the exporter writes Graphs back."""

from cimc.onnx_io.exporter import export_model, save_model
from cimc.onnx_io.importer import import_model, load_model, read_model
from cimc.onnx_io.qdq import adopt_qdq, export_qdq, import_qdq

__all__ = ["adopt_qdq", "export_model", "export_qdq", "import_model", "import_qdq", "load_model", "read_model",
           "save_model"]
