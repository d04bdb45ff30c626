#!/usr/bin/env python3
"""Derives the Unicode exception tables in data/wordpiece_tokenizer.cpp.

HF `tokenizers` (Rust) classifies characters with tables of different Unicode versions:
  - categories (control / punctuation / nonspacing mark) from the `unicode_categories` crate: Unicode 8.0
  - NFD (decompositions, canonical combining classes) from `unicode-normalization-alignments`: Unicode 9.0
  - lowercase from Rust's std `char::to_lowercase`: the Unicode version of the compiler (16.0 for 0.23.x)
Our tokenizer asks utf8proc (Unicode 15.0 in utf8proc 2.8) and corrects it with the ranges printed here.
This script probes every code point through the installed `tokenizers` package and through the system
libutf8proc (ctypes), and prints each table as a C++ initializer. Re-run it after upgrading either
library, paste the output into data/wordpiece_tokenizer.cpp, and run the parity tests.

usage: python3 derive_unicode_exceptions.py                 (prints the tables)
       python3 derive_unicode_exceptions.py --update FILE.cpp (replaces them between the markers)
"""
import ctypes
import ctypes.util
import sys

try:
    from tokenizers import normalizers, pre_tokenizers
except ImportError:
    sys.exit("derive_unicode_exceptions: needs the HF tokenizers package: pip install tokenizers")

lib_path = ctypes.util.find_library("utf8proc")
if not lib_path:
    sys.exit("derive_unicode_exceptions: libutf8proc not found (apt-get install libutf8proc-dev)")
utf8proc = ctypes.CDLL(lib_path)


class Property(ctypes.Structure):  # leading fields of utf8proc_property_t
    _fields_ = [("category", ctypes.c_int16), ("combining_class", ctypes.c_int16)]


utf8proc.utf8proc_get_property.restype = ctypes.POINTER(Property)
utf8proc.utf8proc_tolower.restype = ctypes.c_int32
utf8proc.utf8proc_decompose_char.restype = ctypes.c_ssize_t
utf8proc.utf8proc_decompose_char.argtypes = [ctypes.c_int32, ctypes.POINTER(ctypes.c_int32), ctypes.c_ssize_t,
                                             ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
utf8proc.utf8proc_unicode_version.restype = ctypes.c_char_p
UTF8PROC_DECOMPOSE = 1 << 3
CAT_MN, CAT_PC, CAT_PO, CAT_CC, CAT_CF, CAT_CO = 6, 12, 18, 26, 27, 29
ASCII_PUNCT = set(b"!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~")


def u_category(cp):
    return utf8proc.utf8proc_get_property(cp).contents.category


def u_ccc(cp):
    return utf8proc.utf8proc_get_property(cp).contents.combining_class


def u_nfd(cp):
    buf = (ctypes.c_int32 * 32)()
    last = ctypes.c_int(0)
    n = utf8proc.utf8proc_decompose_char(cp, buf, 32, UTF8PROC_DECOMPOSE, ctypes.byref(last))
    return "".join(chr(buf[i]) for i in range(n))


def u_lower(cp):
    return "i\u0307" if cp == 0x130 else chr(utf8proc.utf8proc_tolower(cp))


def ranges(cps):
    out = []
    for cp in sorted(cps):
        if out and out[-1][1] == cp - 1:
            out[-1][1] = cp
        else:
            out.append([cp, cp])
    return out


def array(type_name, name, items):
    """A C++ std::array initializer, wrapped at 116 columns."""
    head = "constexpr std::array<%s, %d> %s{{" % (type_name, len(items), name)
    if len(head) + sum(len(i) + 2 for i in items) + 3 <= 118:
        return head + ", ".join(items) + "}};"
    lines, current = [head], "   "
    for item in items:
        if len(current) + len(item) + 2 > 116:
            lines.append(current.rstrip())
            current = "   "
        current += " " + item + ","
    lines.append(current.rstrip(","))
    return "\n".join(lines) + "\n}};"


def print_ranges(name, why, cps):
    items = ["{0x%X, 0x%X}" % (a, b) for a, b in ranges(cps)]
    print("// %s\n%s" % (why, array("CodePointRange", name, items)))


def main():
    clean = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=False, strip_accents=False, lowercase=False)
    strip = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=True, lowercase=False)
    lower = normalizers.BertNormalizer(clean_text=False, handle_chinese_chars=False, strip_accents=False, lowercase=True)
    nfd = normalizers.NFD()
    pretok = pre_tokenizers.BertPreTokenizer()

    removed_hf, removed_u, punct_hf, punct_u, mn_hf, mn_u = set(), set(), set(), set(), set(), set()
    nfd_same_as_input, ccc_unknown, lower_diff = [], [], []
    for cp in range(0x110000):
        if 0xD800 <= cp <= 0xDFFF:
            continue
        ch = chr(cp)
        cat = u_category(cp)
        if clean.normalize_str("a" + ch + "a") == "aa":
            removed_hf.add(cp)
        if (cp == 0 or cp == 0xFFFD or cat in (CAT_CC, CAT_CF, CAT_CO)) and cp not in (9, 10, 13):
            removed_u.add(cp)
        if len(pretok.pre_tokenize_str("a" + ch + "a")) == 3:
            punct_hf.add(cp)
        if cp in ASCII_PUNCT or CAT_PC <= cat <= CAT_PO:
            punct_u.add(cp)
        hf_nfd, u_dec = nfd.normalize_str(ch), u_nfd(cp)
        if hf_nfd != u_dec and hf_nfd == ch:
            nfd_same_as_input.append(cp)
        elif hf_nfd != u_dec:
            sys.exit("U+%04X: HF NFD gives %r, utf8proc %r: a new kind of difference, extend the C++" % (cp, hf_nfd, u_dec))
        if hf_nfd == ch and u_dec == ch:  # a mark's category only matters where it survives NFD as itself
            if strip.normalize_str(ch) == "":
                mn_hf.add(cp)
            if cat == CAT_MN:
                mn_u.add(cp)
            ccc = u_ccc(cp)
            if ccc:
                # A mark whose class HF knows is moved before U+0345 (class 240) or after U+0334 (class 1).
                if ccc < 240:
                    known = nfd.normalize_str("a\u0345" + ch) == "a" + ch + "\u0345"
                else:
                    known = nfd.normalize_str("a" + ch + "\u0334") == "a\u0334" + ch
                if not known:
                    ccc_unknown.append(cp)
        hf_low = lower.normalize_str(ch)
        if hf_low != u_lower(cp):
            if len(hf_low) != 1:
                sys.exit("U+%04X: HF lowercases to %r: a multi-character mapping, extend the C++" % (cp, hf_low))
            lower_diff.append((cp, ord(hf_low) - cp))

    print("// Generated by tests/tokenizer_parity/derive_unicode_exceptions.py against tokenizers %s and utf8proc %s."
          % (__import__("tokenizers").__version__, utf8proc.utf8proc_unicode_version().decode()))
    print_ranges("kCleanKeeps", "utf8proc says Cc/Cf/Co, HF keeps (format characters newer than Unicode 8)",
                 removed_u - removed_hf)
    print_ranges("kCleanRemoves", "HF removes, utf8proc says not Cc/Cf/Co", removed_hf - removed_u)
    print_ranges("kPunctNot", "utf8proc says P*, HF does not split (newer than Unicode 8)", punct_u - punct_hf)
    print_ranges("kPunctExtra", "HF splits, utf8proc says not P* (category changed after Unicode 8)",
                 punct_hf - punct_u)
    print_ranges("kMarkNot", "utf8proc says Mn, HF keeps when stripping accents", mn_u - mn_hf)
    print_ranges("kMarkExtra", "HF drops when stripping accents, utf8proc says not Mn", mn_hf - mn_u)
    print_ranges("kNoDecomposition", "utf8proc decomposes, HF's NFD (Unicode 9) does not", nfd_same_as_input)
    print_ranges("kStarterForHf", "utf8proc gives a combining class, HF's NFD treats as a starter (class 0)",
                 ccc_unknown)
    runs = []
    for cp, delta in lower_diff:
        if runs and runs[-1][1] == cp - 1 and runs[-1][2] == delta:
            runs[-1][1] = cp
        else:
            runs.append([cp, cp, delta])
    print("// lowercase mappings newer than utf8proc's Unicode version: {first, last, delta}")
    print(array("LowercaseRange", "kExtraLowercase", ["{0x%X, 0x%X, %d}" % (a, b, d) for a, b, d in runs]))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--update":
        import contextlib
        import io
        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            main()
        begin, end = "// LLMQS_UNICODE_TABLES_BEGIN\n", "// LLMQS_UNICODE_TABLES_END"
        source = open(sys.argv[2], encoding="utf-8").read()
        first, last = source.index(begin) + len(begin), source.index(end)
        open(sys.argv[2], "w", encoding="utf-8").write(source[:first] + text.getvalue() + source[last:])
    else:
        main()
