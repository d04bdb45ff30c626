#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into tests/fuzz/corpus/<target>/ (small, valid or
nearly valid inputs the mutator starts from; committed, regenerate with this script)."""
import json
import os
import struct

HERE = os.path.dirname(os.path.abspath(__file__))


def put(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data if isinstance(data, bytes) else data.encode())


def safetensors(tensors, metadata=None, pad=True):
    header, blob = {}, b""
    if metadata:
        header["__metadata__"] = metadata
    for name, dtype, shape, raw in tensors:
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [len(blob), len(blob) + len(raw)]}
        blob += raw
    h = json.dumps(header).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + blob


# byte 0 of dataset_reader inputs: bit 0 jsonl, bits 1-2 label offset (auto/0/1), bit 3 num_labels 5,
# bit 4 labels_optional (predict)
put("fuzz_dataset_reader", "yelp_csv", b"\x00" + b'"1","good food"\n"5","great, ""really"" great\\nyes"\n')
put("fuzz_dataset_reader", "hf_csv", b"\x02" + b"label,text\n0,fine\n4,\"multi\nline\"\n")
put("fuzz_dataset_reader", "bom_crlf_csv", b"\x08" + b'\xef\xbb\xbf"2","a"\r\n"3","b"\r\n')
put("fuzz_dataset_reader", "jsonl", b"\x01" + b'{"label": 0, "text": "caf\\u00e9"}\n{"text": "x", "label": 4}\n')
put("fuzz_dataset_reader", "jsonl_unicode", b"\x09" + '{"label": 3, "text": "日本語 ok"}\n'.encode())
put("fuzz_dataset_reader", "predict_csv_one_column", b"\x10" + b'"great, really"\nplain text\n')
put("fuzz_dataset_reader", "predict_csv_text_header", b"\x10" + b'id,text\n7,"a ""quoted"" b"\n8,c\n')
put("fuzz_dataset_reader", "predict_jsonl_no_label", b"\x11" + b'{"text": "x"}\n{"id": 2, "text": "y"}\n')

# byte 0 of wordpiece inputs: bit 0 uncased, bits 1-7 max_length - 2
for i, text in enumerate(["Hello, world! The food was great.", "unaffable [CLS] [SEP] [UNK] [PAD] [MASK]",
                          "Caf\u00e9 na\u00efve \u00c5ngstr\u00f6m \u4e2d\u6587 \U0001F600 emoji",
                          "x" * 300, "don't \\n stop... 12.50$ e-mail"]):
    put("fuzz_wordpiece", "text%d" % i, bytes([(i * 37) % 256 | 1]) + text.encode())
put("fuzz_wordpiece", "invalid_utf8", b"\x41" + b"bad \xff\xfe \xc3 bytes \xed\xa0\x80 surrogate")

put("fuzz_vocab_file", "vocab_txt", b"\x00" + b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nhello\n##s\nworld\n")
put("fuzz_vocab_file", "vocab_crlf", b"\x02" + b"[PAD]\r\n[UNK]\r\n[CLS]\r\n[SEP]\r\nhello\r\n")
put("fuzz_vocab_file", "tokenizer_json", b"\x01" + json.dumps({
    "version": "1.0", "normalizer": {"type": "BertNormalizer", "lowercase": True},
    "added_tokens": [{"id": 0, "content": "[PAD]", "special": True}],
    "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
              "max_input_chars_per_word": 100,
              "vocab": {"[PAD]": 0, "[UNK]": 1, "[CLS]": 2, "[SEP]": 3, "hello": 4, "##s": 5}}}).encode())

f32 = struct.pack("<4f", 1.0, -2.0, 0.5, 3.25)
put("fuzz_safetensors", "f32", safetensors([("a.weight", "F32", [2, 2], f32), ("a.bias", "F32", [1], f32[:4])],
                                           {"format": "pt"}))
put("fuzz_safetensors", "mixed", safetensors([("h", "F16", [2], b"\x00\x3c\x00\xc0"), ("b", "BF16", [2], b"\x80\x3f\x00\x40"),
                                              ("d", "F64", [1], struct.pack("<d", 1.5)),
                                              ("ids", "I64", [2], struct.pack("<2q", 0, 1)),
                                              ("e", "F32", [0], b"")], pad=False))
# a number nlohmann::json cannot hold (out_of_range.406, not parse_error): the reader must still say runtime_error
# naming the file (the first finding, fixed in d2ac9ae)
_h = b'{"a": {"dtype": "F32", "shape": [55555555555555555555555555E55555555], "data_offsets": [0, 4]}}'
put("fuzz_safetensors", "header_number_overflow", struct.pack("<Q", len(_h)) + _h + f32[:4])

# the checkpoint target reads its input as edit instructions: any bytes will do
for i, raw in enumerate([b"\x00\x05\x01\x03", b"\x02\x09\x00\x00\x00\x00\x00\x00\x00\x00\x10", b"\x01\x11\x06\x02\x03\x04\x05\x00\x07\x08",
                         b"\x03\x00\x03\x05hello\x01\x04\x00"]):
    put("fuzz_checkpoint", "edits%d" % i, raw)
print("seeds written under", os.path.join(HERE, "corpus"))
