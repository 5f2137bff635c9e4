"""Deployment (installed as udaseg.export): one script per stage, each a thin CLI over importable functions.

    to_onnx.py   checkpoint -> ONNX (fp32 | fp16 | int8 Q/DQ; labels and/or logits; static or dynamic)
    verify.py    ONNX Runtime vs PyTorch on target images: logit difference, pixel agreement, mIoU
    to_trt.py    ONNX -> TensorRT 10/11 engine + <engine>.json metadata (or ONNX Runtime's TensorRT/CUDA provider)
    prepost.py   pre/post-processing shared by every runtime; runtime/ holds its bit-identical C++ twin

``python -m udaseg.infer`` runs any of the artefacts (.pt, .onnx, .engine) on image files. See export/README.md.
"""
