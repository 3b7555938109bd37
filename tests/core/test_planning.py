"""The memory plan on configs of real models (no weights: meta-device init), against GPUs of 8 to
80 GiB; its weight terms against get_memory_footprint() of tiny models really loaded (bf16, 8-bit
and 4-bit through bitsandbytes on the CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from core.planning import (
    DeviceMemory,
    PlanError,
    PlanRequest,
    gpu_of_size,
    make_plan,
    measure,
    shape_of,
)
from core.planning.device import GIB
from core.planning.estimate import Workload, quantized_storage_bytes
from core.settings import Settings

GPUS_GIB = (8, 16, 24, 40, 80)


def llama_31_8b_config() -> Any:
    """meta-llama/Llama-3.1-8B's config.json, as its fields are published."""
    from transformers import LlamaConfig

    return LlamaConfig(hidden_size=4096, num_hidden_layers=32, intermediate_size=14336, vocab_size=128256,
                       num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072,
                       rope_theta=500000.0, rms_norm_eps=1e-5, tie_word_embeddings=False, dtype="bfloat16")


def deberta_v3_large_config() -> Any:
    """microsoft/deberta-v3-large's config.json (stored in fp32)."""
    from transformers import DebertaV2Config

    return DebertaV2Config(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                           intermediate_size=4096, vocab_size=128100, max_position_embeddings=512,
                           relative_attention=True, position_buckets=256, norm_rel_ebd="layer_norm",
                           share_att_key=True, pos_att_type=["p2c", "c2p"], position_biased_input=False,
                           max_relative_positions=-1, type_vocab_size=0, num_labels=3)


def minilm_config() -> Any:
    """sentence-transformers/all-MiniLM-L6-v2's config.json."""
    from transformers import BertConfig

    return BertConfig(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536,
                      vocab_size=30522, max_position_embeddings=512, num_labels=2)


@pytest.fixture(scope="module")
def llama_shape() -> Any:
    return shape_of(llama_31_8b_config(), causal_lm=True)


@pytest.fixture(scope="module")
def deberta_shape() -> Any:
    return shape_of(deberta_v3_large_config(), causal_lm=False)


@pytest.fixture(scope="module")
def minilm_shape() -> Any:
    return shape_of(minilm_config(), causal_lm=False)


def _chat(**kw: Any) -> PlanRequest:
    return PlanRequest(chat=True, **{"max_seq_length": 512, "batch_size": 8, **kw})


def test_llama_31_8b_counts_are_the_published_ones(llama_shape: Any) -> None:
    assert llama_shape.total_params == 8_030_261_248
    # Everything but the embeddings and the untied head is a linear layer bitsandbytes converts.
    assert llama_shape.quantizable_params == 8_030_261_248 - 2 * 128256 * 4096 - (2 * 32 + 1) * 4096
    assert llama_shape.load_dtype_bytes == 2 and llama_shape.kv_dim == 1024 and llama_shape.gated_mlp
    # LoRA on q, k, v, o: r x (in + out) per module: 4096+4096, 4096+1024 twice, 4096+4096.
    assert llama_shape.lora_params(16) == 32 * 16 * (8192 + 5120 + 5120 + 8192)


def test_llama_8b_lora_fits_an_8_gib_card_at_4_bit_and_not_in_bf16(llama_shape: Any) -> None:
    plan = make_plan("meta-llama/Llama-3.1-8B", llama_shape, _chat(), gpu_of_size(8))
    assert plan.fits
    choice = plan.to_dict()["choice"]
    assert choice["quantization"] == "4bit" and choice["max_micro_batch_size"] >= 1
    terms = plan.to_dict()["terms_gib"]
    assert 4.5 < terms["weights"] < 6.0  # 7B linear weights at 4 bits, 1B of embedding + head in bf16
    assert terms["total"] <= 8
    assert set(terms) >= {"weights", "gradients", "optimizer", "activations", "overhead", "total"}
    assert "bf16 needs" in plan.reasons["quantization"] and "8-bit" in plan.reasons["quantization"]
    assert plan.message().startswith("meta-llama/Llama-3.1-8B fits: 4-bit NF4")

    bf16 = make_plan("meta-llama/Llama-3.1-8B", llama_shape, _chat(quantization="none"), gpu_of_size(8))
    assert not bf16.fits and bf16.to_dict()["choice"]["max_micro_batch_size"] == 0
    assert bf16.to_dict()["terms_gib"]["weights"] > 14.9  # 8.03e9 x 2 bytes
    message = bf16.message()
    assert "does not fit" in message and "needs ≥" in message
    assert "at bf16, micro-batch 1, 512 tokens" in message
    assert "this GPU has 8.0 GiB free" in message


@pytest.mark.parametrize("gpu_gib", GPUS_GIB)
def test_llama_8b_lora_choice_per_gpu_size(llama_shape: Any, gpu_gib: int) -> None:
    plan = make_plan("llama", llama_shape, _chat(), gpu_of_size(gpu_gib))
    choice = plan.to_dict()["choice"]
    expected = {8: "4bit", 16: "8bit", 24: "none", 40: "none", 80: "none"}[gpu_gib]
    assert plan.fits and choice["quantization"] == expected
    assert choice["optimizer"] == "adamw"  # LoRA's state is ~0.1 GiB: never the problem
    assert choice["gradient_checkpointing"] is (gpu_gib == 8)
    # More memory, never a smaller micro-batch.
    assert plan.shown.terms.total(choice["max_micro_batch_size"]) <= gpu_gib * GIB


def test_llama_8b_full_fine_tune_needs_an_80_gib_card_and_says_why(llama_shape: Any) -> None:
    # bf16 weights, gradients and AdamW moments: 8 bytes a weight, 60 GiB before activations.
    assert make_plan("llama", llama_shape, _chat(finetuning="full"), gpu_of_size(80)).fits
    plan = make_plan("llama", llama_shape, _chat(finetuning="full"), gpu_of_size(40))
    assert not plan.fits
    assert plan.shown.option.quantization == "none" and plan.shown.option.optimizer == "adamw_8bit"
    assert "LoRA (finetuning: lora) with quantization 4bit needs far less" in plan.message()
    with pytest.raises(PlanError, match="applies to chat jobs with finetuning lora"):
        make_plan("llama", llama_shape, _chat(finetuning="full", quantization="4bit"), gpu_of_size(80))


@pytest.mark.parametrize("gpu_gib", GPUS_GIB)
def test_deberta_v3_large_full_fine_tune_takes_8_bit_adamw_only_when_it_must(deberta_shape: Any,
                                                                            gpu_gib: int) -> None:
    request = PlanRequest(chat=False, max_seq_length=512, batch_size=32)
    plan = make_plan("microsoft/deberta-v3-large", deberta_shape, request, gpu_of_size(gpu_gib))
    choice = plan.to_dict()["choice"]
    assert plan.fits and choice["quantization"] == "none"  # a classifier is never quantized
    assert choice["optimizer"] == ("adamw_8bit" if gpu_gib == 8 else "adamw")
    if gpu_gib == 8:
        assert "does not fit" in plan.reasons["optimizer"]
    # Eager disentangled attention: five (512 x 512) matrices per head and layer dominate a sample.
    assert plan.to_dict()["terms_gib"]["activations_per_sample"] > 0.8
    assert choice["max_micro_batch_size"] == plan.shown.terms.largest_micro_batch(gpu_gib * GIB, 32)


@pytest.mark.parametrize("gpu_gib", GPUS_GIB)
def test_minilm_fits_everywhere_at_the_largest_micro_batch(minilm_shape: Any, gpu_gib: int) -> None:
    request = PlanRequest(chat=False, max_seq_length=128, batch_size=32)
    plan = make_plan("all-MiniLM-L6-v2", minilm_shape, request, gpu_of_size(gpu_gib))
    choice = plan.to_dict()["choice"]
    assert plan.fits and choice == {"quantization": "none", "optimizer": "adamw",
                                    "gradient_checkpointing": False, "max_micro_batch_size": 32,
                                    "compute_dtype": "bf16"}
    assert plan.to_dict()["params"]["total"] == 22_713_986  # MiniLM-L6 (22.7M) + a 2-label head


def test_the_cap_plans_an_80_gib_card_as_an_8_gib_one(llama_shape: Any) -> None:
    capped = DeviceMemory(kind="cuda", name="NVIDIA H100", free_bytes=79 * GIB, total_bytes=80 * GIB,
                          cap_bytes=int(Settings(device_memory_gib=8).device_memory_gib * GIB), bf16=True)
    plan = make_plan("llama", llama_shape, _chat(), capped)
    assert capped.budget_bytes == 8 * GIB
    assert plan.to_dict()["choice"]["quantization"] == "4bit"
    assert "TUNESERVE_DEVICE_MEMORY_GIB caps it" in plan.message()
    # On this machine's CPU the cap applies the same way (nothing else is planned for).
    assert measure(_cpu(), 0.5).budget_bytes == int(0.5 * GIB)


def test_what_the_job_sets_is_taken_and_named(llama_shape: Any) -> None:
    plan = make_plan("llama", llama_shape, _chat(quantization="8bit", optimizer="adamw_8bit",
                                                 gradient_checkpointing=True), gpu_of_size(80))
    choice = plan.to_dict()["choice"]
    assert (choice["quantization"], choice["optimizer"], choice["gradient_checkpointing"]) == \
        ("8bit", "adamw_8bit", True)
    assert plan.reasons == {"quantization": "set by the job (8-bit (LLM.int8))",
                            "optimizer": "set by the job (paged 8-bit AdamW (bitsandbytes), "
                                         "0.03 GiB of state)",
                            "gradient_checkpointing": "set by the job"}
    assert len(plan.options) == 1


def test_the_plan_text_names_every_term_and_choice(llama_shape: Any) -> None:
    text = "\n".join(make_plan("llama", llama_shape, _chat(), gpu_of_size(8)).lines())
    for word in ("weights", "gradients", "optimizer", "activations", "overhead", "total", "free",
                 "quantization: 4bit", "optimizer: adamw", "gradient_checkpointing: True"):
        assert word in text


def _cpu() -> Any:
    import torch

    return torch.device("cpu")


# --- the weight terms against models really loaded ---------------------------------------------

@pytest.mark.parametrize("quantization", ["none", "8bit", "4bit"])
def test_weight_terms_match_the_footprint_of_a_loaded_tiny_llama(tiny_chat_lm_dir: Path,
                                                                 quantization: str) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    shape = shape_of(AutoConfig.from_pretrained(tiny_chat_lm_dir), causal_lm=True)
    quant = {"none": None, "8bit": BitsAndBytesConfig(load_in_8bit=True),
             "4bit": BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                                        bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=torch.float32)}
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_lm_dir, quantization_config=quant[quantization])
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    planned = quantized_storage_bytes(shape, quantization, Workload(lora=True, compute_dtype_bytes=4))  # type: ignore[arg-type]
    assert planned == model.get_memory_footprint() - buffers
    assert shape.total_params == sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(
        tiny_chat_lm_dir).parameters())


def test_lora_count_matches_peft_on_the_tiny_llama(tiny_chat_lm_dir: Path) -> None:
    from peft import LoraConfig, get_peft_model
    from transformers import AutoConfig, AutoModelForCausalLM

    shape = shape_of(AutoConfig.from_pretrained(tiny_chat_lm_dir), causal_lm=True)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_chat_lm_dir),
                           LoraConfig(task_type="CAUSAL_LM", r=8, target_modules=list(shape.lora_targets)))
    assert shape.lora_params(8) == sum(p.numel() for p in model.parameters() if p.requires_grad)


def test_weight_term_matches_a_loaded_encoder(tiny_encoder_dir: Path) -> None:
    from transformers import AutoConfig, AutoModelForSequenceClassification

    config = AutoConfig.from_pretrained(tiny_encoder_dir, num_labels=3)
    shape = shape_of(config, causal_lm=False)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=3)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    assert shape.total_params * shape.load_dtype_bytes == model.get_memory_footprint() - buffers
