"""Build the corpus: real architectures from torchvision, timm and transformers, exported by both torch exporters.

Each entry of :data:`MODELS` builds one architecture in a small configuration (reduced widths,
depths, resolution, vocabulary and sequence length, so that each ONNX file stays small) with the
library's own classes, seeded random weights and no download (no pretrained weights, no hub). The
weights are then made less trivial than a fresh initialisation: every normalisation's scale and
shift and every bias is drawn at random, and BatchNorm's running statistics are measured on seeded
random inputs of the model's kind (train mode, no gradient), so that no layer is an identity and
activations keep their scale through the network.

Each model is exported twice, by the TorchScript exporter (``torch.onnx.export(..., dynamo=False)``,
opset 17) and by the dynamo exporter (opset 18), with a symbolic batch axis, as
``<name>_torchscript.onnx`` and ``<name>_dynamo.onnx``. Every file is checked with
``onnx.checker`` (full check) and run by onnxruntime on seeded inputs, which must agree with torch
(see :data:`TORCH_TOLERANCE`). ``manifest.json`` records per file the architecture, the library,
the exporter and opset, the inputs (name, shape, element type and the kind of data they take:
``image``, ``video``, ``tokens``, ``mask``, ``audio``, ``mel``, ``mel_frames`` or ``mfcc``, as
``tests/corpus_models.py`` draws them), the output, the parameter count and the op-type counts.

Usage, from the repository root, in a venv with ``pip install -e '.[corpus]'`` (the ``zoo`` extra plus
torchvision, timm and transformers)::

    python examples/corpus/build.py              # every model
    python examples/corpus/build.py --only gpt2  # one model (repeatable); the others keep their entry

Deterministic: fixed seeds, one thread, deterministic algorithms; the same tool versions rebuild
the same bytes. A model whose export fails with one exporter is an error, not a silent omission.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import json
import logging
import math
import os
import sys
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent.parent / "tests"))

from corpus_models import draw_inputs  # noqa: E402  (the tests' input rule, one copy of it)

TORCHSCRIPT_OPSET = 17
DYNAMO_OPSET = 18
NUM_CLASSES = 10
SEGMENT_CLASSES = 5
TORCH_TOLERANCE = 1e-4
"""onnxruntime's outputs must equal torch's within this, relative to the output's largest magnitude."""

torch.set_num_threads(1)
torch.set_num_interop_threads(1)
torch.use_deterministic_algorithms(True)
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
logging.getLogger("transformers").setLevel(logging.ERROR)


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Input:
    """One graph input: its name, shape without the batch axis, element type and the kind of data it takes
    (``image``, ``video``, ``tokens``, ``mask``, ``audio``, ``mel``, ``mel_frames`` or ``mfcc``;
    ``tests/corpus_models.py``'s ``draw_inputs`` says how each is drawn)."""

    name: str
    shape: tuple[int, ...]
    kind: str
    dtype: str = "float32"
    vocab: int = 0

    def manifest(self) -> dict[str, object]:
        """The manifest's description of this input (the batch axis first, symbolic)."""
        d: dict[str, object] = {"name": self.name, "shape": ["batch", *self.shape], "dtype": self.dtype,
                                "kind": self.kind}
        if self.vocab:
            d["vocab"] = self.vocab
        return d


def draw(inputs: tuple[Input, ...], batch: int, seed: int) -> dict[str, np.ndarray]:
    """Seeded inputs of each kind, drawn as the tests draw them (``tests/corpus_models.py``)."""
    return draw_inputs([i.manifest() for i in inputs], batch, seed)


# --------------------------------------------------------------------------- models


class Logits(nn.Module):
    """A transformers model called with one input, returning only its ``logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


class MaskedLogits(Logits):
    """A transformers text model called with token ids and an attention mask, returning only its ``logits``."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return self.model(input_ids=input_ids, attention_mask=attention_mask).logits


class KeywordLSTM(nn.Module):
    """Keyword spotting: a 2-layer LSTM over MFCC-like frames, a Linear on the last step's hidden state."""

    def __init__(self, features: int = 10, hidden: int = 24) -> None:
        super().__init__()
        self.lstm = nn.LSTM(features, hidden, num_layers=2, batch_first=True)
        self.fc = nn.Linear(hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.lstm(x)
        return self.fc(y[:, -1])


class KeywordGRU(nn.Module):
    """Keyword spotting: a 2-layer bidirectional GRU over MFCC-like frames, a Linear on the last step's outputs."""

    def __init__(self, features: int = 10, hidden: int = 16) -> None:
        super().__init__()
        self.gru = nn.GRU(features, hidden, num_layers=2, batch_first=True, bidirectional=True)
        self.fc = nn.Linear(2 * hidden, NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y, _ = self.gru(x)
        return self.fc(y[:, -1])


class Output(nn.Module):
    """A model whose forward returns a dict (torchvision's segmentation models), returning only ``key``."""

    def __init__(self, model: nn.Module, key: str) -> None:
        super().__init__()
        self.model = model
        self.key = key

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[self.key]


def _image(size: int = 32) -> tuple[Input, ...]:
    return (Input("input", (3, size, size), "image"),)


def resnet18() -> nn.Module:
    from timm.models.resnet import BasicBlock, ResNet

    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=NUM_CLASSES, channels=(8, 12, 16, 24), stem_width=8,
                  zero_init_last=False)


def mobilenet_v2() -> nn.Module:
    from torchvision.models import MobileNetV2

    setting = [[1, 8, 1, 1], [6, 12, 2, 2], [6, 16, 2, 2], [6, 24, 2, 2], [6, 32, 1, 1]]
    m = MobileNetV2(num_classes=NUM_CLASSES, width_mult=1.0, inverted_residual_setting=setting, dropout=0.0)
    # the last 1x1 conv widens to 1280 channels in every configuration; 64 keeps the file small
    from torchvision.ops.misc import Conv2dNormActivation

    m.features[-1] = Conv2dNormActivation(32, 64, kernel_size=1, activation_layer=nn.ReLU6)
    m.classifier[-1] = nn.Linear(64, NUM_CLASSES)
    return m


def mobilenet_v3_small() -> nn.Module:
    from torchvision.models.mobilenetv3 import InvertedResidualConfig, MobileNetV3

    c = InvertedResidualConfig
    setting = [c(8, 3, 8, 8, True, "RE", 2, 1, 1.0), c(8, 3, 24, 12, False, "RE", 2, 1, 1.0),
               c(12, 3, 32, 12, False, "RE", 1, 1, 1.0), c(12, 5, 48, 16, True, "HS", 2, 1, 1.0),
               c(16, 5, 64, 16, True, "HS", 1, 1, 1.0), c(16, 5, 64, 24, True, "HS", 2, 1, 1.0)]
    return MobileNetV3(setting, last_channel=64, num_classes=NUM_CLASSES, dropout=0.0)


def efficientnet_b0() -> nn.Module:
    from torchvision.models.efficientnet import EfficientNet, MBConvConfig

    # B0's seven stages (expand, kernel, stride, channels, layers) at a quarter width, one block each
    c = MBConvConfig
    setting = [c(1, 3, 1, 8, 8, 1), c(6, 3, 2, 8, 8, 1), c(6, 5, 2, 8, 12, 1), c(6, 3, 2, 12, 16, 1),
               c(6, 5, 1, 16, 24, 1), c(6, 5, 2, 24, 32, 1), c(6, 3, 1, 32, 40, 1)]
    return EfficientNet(setting, dropout=0.0, stochastic_depth_prob=0.0, num_classes=NUM_CLASSES, last_channel=64)


def shufflenet_v2() -> nn.Module:
    from torchvision.models import ShuffleNetV2

    return ShuffleNetV2([2, 2, 2], [8, 16, 32, 48, 64], num_classes=NUM_CLASSES)


def squeezenet1_1() -> nn.Module:
    from torchvision.models import SqueezeNet
    from torchvision.models.squeezenet import Fire

    m = SqueezeNet("1_1", num_classes=NUM_CLASSES)
    # SqueezeNet 1.1's layout (conv, pool, 2 Fire, pool, 2 Fire, pool, 4 Fire) at a quarter of its widths
    m.features = nn.Sequential(
        nn.Conv2d(3, 16, kernel_size=3, stride=2), nn.ReLU(inplace=True),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(16, 4, 16, 16), Fire(32, 4, 16, 16),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(32, 8, 32, 32), Fire(64, 8, 32, 32),
        nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True),
        Fire(64, 12, 48, 48), Fire(96, 12, 48, 48), Fire(96, 16, 64, 64), Fire(128, 16, 64, 64),
    )
    m.classifier[1] = nn.Conv2d(128, NUM_CLASSES, kernel_size=1)
    m.classifier[0] = nn.Identity()  # dropout
    return m


def regnet_y() -> nn.Module:
    from torchvision.models.regnet import BlockParams, RegNet

    params = BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8, se_ratio=0.25)
    return RegNet(params, num_classes=NUM_CLASSES, stem_width=8)


def convnext() -> nn.Module:
    from torchvision.models.convnext import CNBlockConfig, ConvNeXt

    setting = [CNBlockConfig(8, 16, 1), CNBlockConfig(16, 24, 1), CNBlockConfig(24, 32, 2), CNBlockConfig(32, None, 1)]
    return ConvNeXt(setting, stochastic_depth_prob=0.0, layer_scale=0.5, num_classes=NUM_CLASSES)


def vit() -> nn.Module:
    from torchvision.models import VisionTransformer

    return VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64,
                             num_classes=NUM_CLASSES)


def deit() -> nn.Module:
    from timm.models.deit import VisionTransformerDistilled

    return VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0,
                                      num_classes=NUM_CLASSES)


def swin() -> nn.Module:
    from timm.models.swin_transformer import SwinTransformer

    return SwinTransformer(img_size=32, patch_size=2, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=4,
                           mlp_ratio=2.0, drop_path_rate=0.0, num_classes=NUM_CLASSES)


def mobilevit() -> nn.Module:
    from timm.models.byobnet import ByobNet, ByoModelCfg
    from timm.models.mobilevit import _inverted_residual_block, _mobilevit_block

    cfg = ByoModelCfg(
        blocks=(_inverted_residual_block(d=1, c=8, s=1, br=2.0), _inverted_residual_block(d=1, c=12, s=2, br=2.0),
                _mobilevit_block(d=1, c=16, s=2, transformer_dim=24, transformer_depth=1, patch_size=2, br=2.0),
                _mobilevit_block(d=1, c=24, s=2, transformer_dim=32, transformer_depth=1, patch_size=2, br=2.0)),
        stem_chs=8, stem_type="3x3", stem_pool="", downsample="", act_layer="silu", num_features=64)
    return ByobNet(cfg, num_classes=NUM_CLASSES)


def densenet() -> nn.Module:
    from torchvision.models import DenseNet

    return DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2, num_classes=NUM_CLASSES)


def nfnet() -> nn.Module:
    from timm.models.nfnet import NfCfg, NormFreeNet

    cfg = NfCfg(depths=(1, 1), channels=(16, 32), stem_chs=8, stem_type="", group_size=8, bottle_ratio=0.5,
                extra_conv=False, attn_layer=None, act_layer="gelu", num_features=48, gamma_in_act=False)
    return NormFreeNet(cfg, num_classes=NUM_CLASSES)


def cspdarknet() -> nn.Module:
    from timm.models.cspnet import CspModelCfg, CspNet, CspStagesCfg, CspStemCfg

    cfg = CspModelCfg(stem=CspStemCfg(out_chs=8, kernel_size=3, stride=1, pool=""),
                      stages=CspStagesCfg(depth=(1, 1, 1), out_chs=(16, 24, 32), stride=2, expand_ratio=2.0,
                                          bottle_ratio=0.5, block_ratio=1.0, cross_linear=True, down_growth=True,
                                          stage_type="dark"),
                      act_layer="mish")
    return CspNet(cfg, num_classes=NUM_CLASSES)


def levit() -> nn.Module:
    from timm.models.levit import Levit

    m = Levit(img_size=32, embed_dim=(16, 24), key_dim=8, depth=(1, 1), num_heads=(2, 2), num_classes=NUM_CLASSES)
    with torch.no_grad():  # timm starts the attention biases at zero, which would leave their gather untested
        for name, p in m.named_parameters():
            if name.endswith("attention_biases"):
                p.copy_(torch.randn(p.shape))
    return m


def lraspp() -> nn.Module:
    from torchvision.models._utils import IntermediateLayerGetter
    from torchvision.models.segmentation.lraspp import LRASPP

    # torchvision's lraspp_mobilenet_v3 layout: low-level features at stride 8, high-level at stride 16
    backbone = IntermediateLayerGetter(mobilenet_v3_small().features, {"3": "low", "5": "high"})
    return Output(LRASPP(backbone, low_channels=16, high_channels=16, num_classes=SEGMENT_CLASSES, inter_channels=16),
                  "out")


def r3d() -> nn.Module:
    from torchvision.models.video.resnet import BasicBlock, Conv3DSimple, VideoResNet

    class SmallR3D(VideoResNet):
        """torchvision's R3D-18 layout (3-D stem, four stages of 3x3x3 BasicBlocks) at widths 8-24, one block each."""

        def __init__(self) -> None:
            nn.Module.__init__(self)
            self.inplanes = 8
            self.stem = nn.Sequential(nn.Conv3d(3, 8, (3, 7, 7), (1, 2, 2), (1, 3, 3), bias=False),
                                      nn.BatchNorm3d(8), nn.ReLU(inplace=True))
            self.layer1 = self._make_layer(BasicBlock, Conv3DSimple, 8, 1, stride=1)
            self.layer2 = self._make_layer(BasicBlock, Conv3DSimple, 12, 1, stride=2)
            self.layer3 = self._make_layer(BasicBlock, Conv3DSimple, 16, 1, stride=2)
            self.layer4 = self._make_layer(BasicBlock, Conv3DSimple, 24, 1, stride=2)
            self.avgpool = nn.AdaptiveAvgPool3d((1, 1, 1))
            self.fc = nn.Linear(24, NUM_CLASSES)

    return SmallR3D()


TEXT_VOCAB, TEXT_LEN = 128, 16


def bert() -> nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=TEXT_VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=TEXT_LEN, num_labels=NUM_CLASSES,
                     hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    return MaskedLogits(BertForSequenceClassification(cfg))


def distilbert() -> nn.Module:
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    cfg = DistilBertConfig(vocab_size=TEXT_VOCAB, dim=32, n_layers=2, n_heads=2, hidden_dim=64,
                           max_position_embeddings=TEXT_LEN, num_labels=NUM_CLASSES, dropout=0.0,
                           attention_dropout=0.0, seq_classif_dropout=0.0)
    return MaskedLogits(DistilBertForSequenceClassification(cfg))


def gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = GPT2Config(vocab_size=TEXT_VOCAB, n_positions=TEXT_LEN, n_embd=32, n_layer=2, n_head=2, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, use_cache=False)
    return MaskedLogits(GPT2LMHeadModel(cfg))


def albert() -> nn.Module:
    from transformers import AlbertConfig, AlbertForSequenceClassification

    cfg = AlbertConfig(vocab_size=TEXT_VOCAB, embedding_size=16, hidden_size=32, num_hidden_layers=3,
                       num_attention_heads=2, intermediate_size=64, max_position_embeddings=TEXT_LEN,
                       num_labels=NUM_CLASSES, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
                       classifier_dropout_prob=0.0)
    return MaskedLogits(AlbertForSequenceClassification(cfg))


def llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=TEXT_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TEXT_LEN, use_cache=False)
    return MaskedLogits(LlamaForCausalLM(cfg))


AUDIO_SAMPLES = 1600  # 0.1 s at 16 kHz


def wav2vec2() -> nn.Module:
    from transformers import Wav2Vec2Config, Wav2Vec2ForSequenceClassification

    cfg = Wav2Vec2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                         conv_dim=(16, 16, 16), conv_stride=(5, 4, 2), conv_kernel=(10, 4, 2),
                         num_conv_pos_embeddings=8, num_conv_pos_embedding_groups=4, feat_extract_norm="group",
                         hidden_dropout=0.0, attention_dropout=0.0, activation_dropout=0.0, feat_proj_dropout=0.0,
                         final_dropout=0.0, layerdrop=0.0, mask_time_prob=0.0, classifier_proj_size=16,
                         num_labels=NUM_CLASSES)
    return Logits(Wav2Vec2ForSequenceClassification(cfg))


WHISPER_MELS, WHISPER_FRAMES = 16, 32


def whisper() -> nn.Module:
    from transformers import WhisperConfig, WhisperForAudioClassification

    cfg = WhisperConfig(num_mel_bins=WHISPER_MELS, d_model=32, encoder_layers=2, encoder_attention_heads=2,
                        encoder_ffn_dim=64, decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=64,
                        max_source_positions=WHISPER_FRAMES // 2, vocab_size=TEXT_VOCAB, classifier_proj_size=16,
                        num_labels=NUM_CLASSES, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)
    return Logits(WhisperForAudioClassification(cfg))


VOCODER_MELS, VOCODER_FRAMES = 16, 12


def hifigan() -> nn.Module:
    from transformers import SpeechT5HifiGan, SpeechT5HifiGanConfig

    cfg = SpeechT5HifiGanConfig(model_in_dim=VOCODER_MELS, upsample_initial_channel=32, upsample_rates=[4, 4],
                                upsample_kernel_sizes=[8, 8], resblock_kernel_sizes=[3, 5],
                                resblock_dilation_sizes=[[1, 3], [1, 3]], normalize_before=False)
    return SpeechT5HifiGan(cfg)


@dataclass(frozen=True)
class Model:
    """One corpus architecture: how to build it, where it comes from, and what it takes."""

    name: str
    build: Callable[[], nn.Module]
    library: str
    description: str
    inputs: tuple[Input, ...]
    seed: int
    output: str = "logits"
    notes: dict[str, str] = field(default_factory=dict)


_TEXT = (Input("input_ids", (TEXT_LEN,), "tokens", "int64", TEXT_VOCAB), Input("attention_mask", (TEXT_LEN,), "mask",
                                                                               "int64"))
MODELS: tuple[Model, ...] = (
    Model("resnet18", resnet18, "timm", "ResNet-18 (BasicBlock x [2,2,2,2]), widths 8-24, 32x32 input", _image(), 1),
    Model("mobilenet_v2", mobilenet_v2, "torchvision",
          "MobileNetV2 inverted residuals with ReLU6, 5 stages, last conv to 64", _image(), 2),
    Model("mobilenet_v3_small", mobilenet_v3_small, "torchvision",
          "MobileNetV3 blocks: squeeze-excitation, hardswish, hardsigmoid", _image(), 3),
    Model("efficientnet_b0", efficientnet_b0, "torchvision",
          "EfficientNet-B0's 7 MBConv stages (SiLU, squeeze-excitation), one block each, quarter width", _image(), 4),
    Model("shufflenet_v2", shufflenet_v2, "torchvision",
          "ShuffleNetV2: channel split, branch convs, channel shuffle", _image(), 5),
    Model("squeezenet1_1", squeezenet1_1, "torchvision",
          "SqueezeNet 1.1 Fire modules (squeeze 1x1, expand 1x1 + 3x3, concat), quarter width", _image(), 6),
    Model("regnet_y", regnet_y, "torchvision",
          "RegNetY: grouped 3x3 bottlenecks with squeeze-excitation, 4 blocks", _image(), 7),
    Model("convnext", convnext, "torchvision",
          "ConvNeXt: 7x7 depthwise, channels-last LayerNorm, GELU MLP, layer scale", _image(), 8),
    Model("vit", vit, "torchvision",
          "ViT: 8x8 patches, class token, 2 encoder layers with nn.MultiheadAttention", _image(), 9),
    Model("deit", deit, "timm",
          "DeiT (distilled): class and distillation tokens, 2 blocks, 2 heads, averaged heads", _image(), 10),
    Model("swin", swin, "timm",
          "Swin: 4x4 windows, shifted windows with relative position bias, patch merging", _image(), 11),
    Model("mobilevit", mobilevit, "timm",
          "MobileViT: inverted residuals, then local conv + unfold-to-patches transformer + fold blocks",
          _image(64), 12),
    Model("bert", bert, "transformers",
          "BERT for sequence classification: 2 layers, hidden 32, padding mask, 16 tokens", _TEXT, 13),
    Model("distilbert", distilbert, "transformers",
          "DistilBERT for sequence classification: 2 layers, hidden 32, padding mask, 16 tokens", _TEXT, 14),
    Model("gpt2", gpt2, "transformers",
          "GPT-2 language model head: 2 causal layers, hidden 32, padding mask, 16 tokens", _TEXT, 15),
    Model("wav2vec2", wav2vec2, "transformers",
          "wav2vec 2.0 classifier: 1-D conv feature encoder (GroupNorm), conv positions, 2 layers", 
          (Input("input_values", (AUDIO_SAMPLES,), "audio"),), 16),
    Model("whisper", whisper, "transformers",
          "Whisper encoder classifier: 2 1-D convs on log-mel frames, sinusoidal positions, 2 layers",
          (Input("input_features", (WHISPER_MELS, WHISPER_FRAMES), "mel"),), 17),
    Model("lstm_kws", KeywordLSTM, "torch",
          "keyword spotting: 2-layer nn.LSTM over 20 MFCC-like frames, Linear on the last step",
          (Input("input", (20, 10), "mfcc"),), 18),
    Model("densenet", densenet, "torchvision",
          "DenseNet: 3 dense blocks of 2 bottleneck layers (growth 8), transitions with average pooling", _image(), 19),
    Model("nfnet", nfnet, "timm",
          "NF-ResNet: normalizer-free bottlenecks, scaled weight standardization computed in the graph, GELU",
          _image(), 20),
    Model("cspdarknet", cspdarknet, "timm", "CSPDarknet: cross-stage partial dark stages, Mish", _image(), 21),
    Model("levit", levit, "timm",
          "LeViT: conv stem, attention with learned biases gathered by offset, BatchNorm'd linears, subsample "
          "attention, hardswish", _image(), 22),
    Model("lraspp", lraspp, "torchvision",
          "LR-ASPP segmentation head on MobileNetV3 blocks: squeeze gate, bilinear upsampling, 5-class map at 64x64",
          _image(64), 23, output="out"),
    Model("r3d", r3d, "torchvision",
          "R3D video ResNet: 3-D convolutions over 4 frames of 32x32, one BasicBlock per stage",
          (Input("input", (3, 4, 32, 32), "video"),), 24),
    Model("llama", llama, "transformers",
          "Llama causal LM: 2 layers, RMSNorm, rotary positions, grouped-query attention (4 heads, 2 KV), SwiGLU MLP",
          _TEXT, 25),
    Model("hifigan", hifigan, "transformers",
          "HiFi-GAN vocoder (SpeechT5): transposed 1-D convs upsampling 16x, dilated residual blocks, leaky ReLU",
          (Input("spectrogram", (VOCODER_FRAMES, VOCODER_MELS), "mel_frames"),), 26, output="waveform"),
    Model("albert", albert, "transformers",
          "ALBERT for sequence classification: factorized embeddings (16 -> 32), one layer's weights shared by "
          "all 3 layers", _TEXT, 28),
    Model("gru_kws", KeywordGRU, "torch",
          "keyword spotting: 2-layer bidirectional nn.GRU over 20 MFCC-like frames, Linear on the last step",
          (Input("input", (20, 10), "mfcc"),), 27),
)
MODEL_BY_NAME = {m.name: m for m in MODELS}


# --------------------------------------------------------------------------- weights


def randomize(model: nn.Module, spec: Model) -> nn.Module:
    """Seeded weights that make every layer count.

    Libraries initialise for training, not for inference: zero heads (ViT), std 0.01-0.02 for
    Linear layers (MobileNetV3, ConvNeXt, BERT, Whisper), zero biases, identity normalisations. A
    network so initialised gives nearly the same output for every input, which would make a
    comparison of outputs vacuous. So every Conv and Linear weight is drawn He-normal (std
    sqrt(2 / fan_in); a transposed convolution's fan-in is in * kernel / stride), every
    normalisation scale (BatchNorm, LayerNorm, GroupNorm, RMSNorm) from U(0.5, 1.5), every other 1-D parameter
    (biases, shifts) from N(0, 0.1^2); embeddings, LSTM weights and weight-normed convolutions keep
    their library's initialisation; BatchNorm's running statistics are measured on seeded inputs of
    the model's kind (train mode, no gradient)."""
    from torch.nn.utils import parametrize

    gen = torch.Generator().manual_seed(spec.seed)
    with torch.no_grad():
        for m in model.modules():
            stored_in_out = type(m).__name__ == "Conv1D"  # GPT-2's Linear with the weight stored (in, out)
            if not (isinstance(m, nn.Conv1d | nn.Conv2d | nn.Conv3d | nn.ConvTranspose1d | nn.Linear) or stored_in_out):
                continue
            if parametrize.is_parametrized(m):
                continue
            w = m.weight
            if isinstance(m, nn.ConvTranspose1d):  # weight (in, out, k): each output sums in * k / stride terms
                fan_in = w.shape[0] * w.shape[2] // m.stride[0]
            else:
                fan_in = w.shape[0] if stored_in_out else w[0].numel()
            w.copy_(torch.randn(w.shape, generator=gen) * math.sqrt(2.0 / fan_in))
        norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.RMSNorm)
        scales = {id(m.weight) for m in model.modules()
                  if (isinstance(m, norms) or type(m).__name__.endswith("RMSNorm")) and m.weight is not None}
        for p in model.parameters():
            if p.ndim != 1:
                continue
            if id(p) in scales:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if bns:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # a cumulative average over the batches below
        model.train()
        with torch.no_grad():
            for i in range(4):
                model(*[torch.from_numpy(a) for a in draw(spec.inputs, 16, 1000 + i).values()])
    return model.eval()


# --------------------------------------------------------------------------- export


def export(model: nn.Module, spec: Model, exporter: str) -> onnx.ModelProto:
    """``model`` exported by ``exporter`` with a symbolic batch axis, cleaned of build-dependent metadata."""
    example = tuple(torch.from_numpy(a) for a in draw(spec.inputs, 2, spec.seed).values())
    names = [i.name for i in spec.inputs]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            buf = io.BytesIO()
            torch.onnx.export(model, example, buf, dynamo=False, opset_version=TORCHSCRIPT_OPSET, input_names=names,
                              output_names=[spec.output],
                              dynamic_axes={**{n: {0: "batch"} for n in names}, spec.output: {0: "batch"}},
                              training=torch.onnx.TrainingMode.EVAL)
            proto = onnx.load_from_string(buf.getvalue())
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.onnx.export(model, example, dynamo=True, verbose=False, opset_version=DYNAMO_OPSET,
                                        input_names=names, output_names=[spec.output],
                                        dynamic_shapes=tuple({0: batch} for _ in names), external_data=False,
                                        optimize=True, report=False, verify=False)
            assert program is not None
            proto = program.model_proto
    return clean(proto)


def clean(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop doc strings and metadata (stack traces with absolute paths): they depend on where the file was built."""
    model.doc_string = ""
    model.graph.doc_string = ""
    for node in model.graph.node:
        node.doc_string = ""
        del node.metadata_props[:]
    for vi in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        vi.doc_string = ""
        del vi.metadata_props[:]
    for init in model.graph.initializer:
        del init.metadata_props[:]
    del model.graph.metadata_props[:]
    del model.metadata_props[:]
    return model


def check(model: nn.Module, spec: Model, proto: onnx.ModelProto, label: str) -> float:
    """onnxruntime's outputs on seeded inputs (batch 3, another size than the export's example) against
    torch's; returns the largest error relative to the output's largest magnitude, which must stay
    below :data:`TORCH_TOLERANCE`."""
    onnx.checker.check_model(proto, full_check=True)
    x = draw(spec.inputs, 3, spec.seed + 100)
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(proto.SerializeToString(), so, providers=["CPUExecutionProvider"])
    (got,) = sess.run(None, x)
    with torch.no_grad():
        want = model(*[torch.from_numpy(a) for a in x.values()]).numpy()
    err = float(np.abs(got - want).max() / max(float(np.abs(want).max()), 1e-12))
    if not math.isfinite(err) or err > TORCH_TOLERANCE:
        raise RuntimeError(f"{label}: onnxruntime differs from torch by {err:.3g} (relative)")
    return err


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return ""


def build(spec: Model) -> list[dict[str, object]]:
    """Build ``spec``, export it with both exporters, check and write each file; its manifest entries."""
    torch.manual_seed(spec.seed)
    model = randomize(spec.build(), spec)
    entries = []
    for exporter in ("torchscript", "dynamo"):
        label = f"{spec.name}_{exporter}"
        proto = export(model, spec, exporter)
        err = check(model, spec, proto, label)
        blob = proto.SerializeToString()
        (HERE / f"{label}.onnx").write_bytes(blob)
        ops = Counter(n.op_type for n in proto.graph.node)
        opset = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
        print(f"  {label:32s} opset {opset}  {len(blob) / 1024:7.1f} KiB  {sum(ops.values()):4d} nodes  "
              f"vs torch {err:.1e}")
        entries.append({"name": label, "file": f"{label}.onnx", "model": spec.name, "library": spec.library,
                        "description": spec.description, "exporter": exporter, "opset": opset,
                        "inputs": [i.manifest() for i in spec.inputs], "output": spec.output,
                        "num_params": sum(p.numel() for p in model.parameters()), "bytes": len(blob),
                        "op_types": dict(sorted(ops.items()))})
    return entries


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", action="append", choices=sorted(MODEL_BY_NAME), metavar="NAME",
                    help="build only this model (repeatable); the others keep their manifest entries")
    args = ap.parse_args(argv)
    path = HERE / "manifest.json"
    old = json.loads(path.read_text(encoding="utf-8"))["models"] if args.only and path.exists() else []
    wanted = set(args.only or MODEL_BY_NAME)
    entries: list[dict[str, object]] = []
    for spec in MODELS:
        if spec.name in wanted:
            entries.extend(build(spec))
        else:
            entries.extend(e for e in old if e["model"] == spec.name)
    manifest = {"built_with": {d: _version(d) for d in ("torch", "torchvision", "timm", "transformers", "onnx",
                                                         "onnxscript", "onnxruntime")},
                "torch_tolerance": TORCH_TOLERANCE, "models": entries}
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    total = sum(int(e["bytes"]) for e in entries)  # type: ignore[call-overload]
    print(f"{len(entries)} files, {total / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
