#!/usr/bin/env python3
"""Writes the deterministic tokenizer parity corpus: one text per line ('\\n' never occurs inside a
line; every other character may), several thousand lines of the kinds of text that break
tokenizers: reviews with punctuation, accents, German sharp s, Turkish dotted I, CJK, emoji and ZWJ
sequences, URLs and e-mails, control characters, Unicode spaces, combining marks, words longer than
100 characters, numbers, many scripts, literal special tokens, and random code points.

usage: python3 make_corpus.py OUT.txt [--seed N]
The same seed always gives the same bytes (random.Random, no hash ordering, no time).
"""
import argparse
import random

LINES_PER_KIND = 300

REVIEW_WORDS = (
    "the food was great and the service friendly but our waiter forgot the drinks twice we waited "
    "forty minutes for a table which is ridiculous on a tuesday night pizza crust burnt salad fresh "
    "prices reasonable parking terrible staff rude manager apologized dessert amazing coffee cold "
    "would come back never again highly recommend avoid this place at all costs best tacos in town "
    "overpriced underwhelming delicious atmosphere cozy loud music brunch mimosas bottomless").split()
OPENERS = ["", "Honestly", "OMG", "Well", "So", "Ugh", "Wow", "FYI", "Update", "EDIT", "Meh"]
PUNCT_BITS = ["!", "!!!", "?!", "...", ",", ";", ":", " - ", " -- ", "(", ")", "\"", "'", "*", "#", "$",
              "%", "&", "+", "=", "<", ">", "@", "^", "_", "`", "{", "}", "|", "~", "/", "\\", "[", "]",
              "\u2014", "\u2013", "\u2026", "\u00bf", "\u00a1", "\u00ab", "\u00bb", "\u201c", "\u201d",
              "\u2018", "\u2019", "\u00b7", "\u3001", "\u3002", "\uff01", "\uff1f", "\u00a7", "\u00b6"]
ACCENTED = ["café", "naïve", "résumé", "jalapeño", "piñata", "Ångström", "Åse", "Zoë", "crème brûlée",
            "São Paulo", "Bogotá", "Kraków", "Ærøskøbing", "façade", "smörgåsbord", "Dvořák", "Łódź",
            "ÉCOLE", "ÑANDÚ", "Ÿ", "ǅ", "ǈ", "Ǆ", "ﬁne", "ﬂour", "Ⅻ", "½", "²", "ª", "º",
            "cafe\u0301", "nai\u0308ve", "A\u030angstro\u0308m", "n\u0303", "\u1e9b\u0323", "ǖ", "ȁ", "Ḉ"]
GERMAN = ["Straße", "STRASSE", "Fußgängerübergänge", "Maß", "MASSE", "ẞ", "GROẞ", "groß", "Größe",
          "Äpfel", "Öl", "Übermut", "weiß", "Weißbier", "scheiß", "süß"]
TURKISH = ["İstanbul", "ISTANBUL", "ıspanak", "Iğdır", "İzmir", "DİYARBAKIR", "şişli", "ÇİĞ", "i̇", "İİİ"]
CHINESE = ["我们今天去吃了北京烤鸭，味道非常好！", "服务员态度很差。", "这家餐厅的价格有点贵，但是菜很好吃。",
           "好吃", "不推荐", "五星好评！！！", "豆腐", "麻婆豆腐很辣"]
JAPANESE = ["とても美味しかったです。", "ラーメンが最高！", "また来たいと思います", "東京駅の近くにあるお店",
            "ｶﾀｶﾅ ﾊﾝｶｸ", "ｈａｎｋａｋｕ", "コーヒー☕", "寿司🍣"]
KOREAN = ["정말 맛있어요!", "서비스가 별로였어요.", "다시 방문할게요", "김치찌개", "한국어 텍스트", "ᄀᄁᄂ", "ㄱㄴㄷ"]
CJK_EXTRA = ["\U00020000\U00020001", "\U0002a6d6", "\U0002b740", "\U0002b81d", "\U0002b820\U0002b8ff",
             "\U0002b920", "\U0002ceaf", "\U0002ceb0", "\U0002f800\U0002fa1d", "\uf900\ufa0e\ufa6d\ufaff",
             "\u3400\u4dbf", "\u4e00\u9fff", "\u9fa5\u9fd0", "\u2e80\u2f00\u3005\u3007\u303b", "\U00030000",
             "\U00031350"]
EMOJI = ["😀", "😂😂😂", "👍", "👍🏽", "👨\u200d👩\u200d👧\u200d👦", "🏳️\u200d🌈", "❤️", "❤", "🇺🇸", "🇩🇪🇫🇷",
         "🧑\u200d🍳", "☕️", "🍕🍔🍟", "👩🏿\u200d💻", "🥰", "🫠", "🪿", "©", "®", "™", "✔", "★☆", "♥",
         "1️⃣", "#️⃣", "🔥🔥", "💯"]
URLS = ["https://www.yelp.com/biz/joes-pizza-new-york?osq=pizza&page=2#reviews",
        "http://example.com/a_b-c~d/%20e", "www.example.org", "ftp://files.example.net/pub/file.tar.gz",
        "john.doe+yelp@example.com", "info@café.fr", "user_name@sub.domain.co.uk", "mailto:x@y.z",
        "https://t.co/AbCdEf123", "C:\\Users\\me\\file.txt", "/usr/local/bin", "@joes_pizza", "#foodie"]
CONTROLS = ["\x00", "\x01", "\x07", "\x08", "\x0b", "\x0c", "\x0e", "\x1b", "\x1c", "\x1d", "\x1e", "\x1f",
            "\x7f", "\x80", "\x85", "\x9f", "\u00ad", "\u061c", "\u180e", "\u200b", "\u200c", "\u200d",
            "\u200e", "\u200f", "\u202a", "\u202e", "\u2060", "\u2066", "\ufeff", "\ufff9", "\ufffb",
            "\ufffd", "\U000110bd", "\U0001d173", "\U000e0001", "\U000e0041", "\ue000", "\uf8ff",
            "\U000f0000", "\U0010fffd", "\r", "\u0890", "\u08e2", "\U00013430"]
SPACES = ["\t", " ", "  ", "\u00a0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005",
          "\u2006", "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f", "\u205f",
          "\u3000", "\r", "\t\t", " \r ", "\u00a0\u00a0"]
MARKS = ["\u0300", "\u0301", "\u0302", "\u0303", "\u0308", "\u030a", "\u0323", "\u0327", "\u0328", "\u0334",
         "\u0336", "\u0345", "\u0489", "\u05b0", "\u05bc", "\u064b", "\u0650", "\u0670", "\u093c", "\u094d",
         "\u0e31", "\u0e48", "\u1ab0", "\u1dc0", "\u20d7", "\u20e3", "\ufe0f", "\ufe20", "\U0001d165",
         "\U0001d16d", "\U0001d167", "\u0f71", "\u0f72", "\u0f80", "\u1734", "\u1df6", "\u1dfb", "\u08d3",
         "\u0c3c", "\U00016ff0", "\u0340", "\u0344", "\u0f73", "\u3099", "\u309a"]
SCRIPTS = ["Привет, как дела? Ёлка и ЁЖ.", "ΣΊΣΥΦΟΣ σοφός ΟΔΟΣ Ὀδυσσεύς ἄλφα", "ΑΒΓΔ αβγδ ς",
           "مرحبا بالعالم! المطعم رائع جداً.", "שָׁלוֹם עוֹלָם", "नमस्ते दुनिया। खाना बहुत अच्छा था",
           "สวัสดีครับ อาหารอร่อยมาก", "გამარჯობა", "Բարեւ", "ሰላም", "ᏣᎳᎩ", "ꓘꓳꓤ", "𐐀𐐨 Deseret", "ᲐᲑᲒ",
           "Ꭰꭰ", "Ꞌꞌ", "\u1c89\u1c8a", "\ua7cb\ua7cc\ua7dc", "\U00010d50\U00010d65", "\U00016ea0",
           "\u2e43\u2e4f\u2e5d", "\u166d\U000111c9", "\U00011938", "\u1fef\u1fed\u037e\u0387",
           "Ⓐⓑ", "𝐀𝐁𝐂 𝔸𝔹", "ℌℍ", "Ω Ω", "K K Å Å"]
NUMBERS = ["3.14159", "1,000,000", "2nd", "12:30pm", "(555) 123-4567", "$12.99", "€5,50", "¥1000",
           "50%", "4/5", "10/10", "1st", "#1", "3x", "0.5kg", "1e-9", "٣٤٥", "१२३", "໑໒", "①②", "¼", "Ⅷ",
           "-42", "+7", "1_000", "٫", "２０２４年"]
SPECIALS = ["[CLS]", "[SEP]", "[MASK]", "[UNK]", "[PAD]", "[mask]", "[Mask]", "[MASK", "MASK]", "x[SEP]y",
            "[[CLS]]", "[CLS][SEP]", "[ CLS ]", "[unused0]", "[unused1]", "##ing", "##", "#", "[UNK][UNK]"]


def random_code_point(rng):
    while True:
        plane = rng.choice([0, 0, 0, 0, 1, 1, 2, 3, 14, 15, 16])
        cp = plane * 0x10000 + rng.randrange(0x10000)
        if not (0xD800 <= cp <= 0xDFFF) and cp != 0x0A:
            return chr(cp)


def review_sentence(rng):
    words = [rng.choice(REVIEW_WORDS) for _ in range(rng.randrange(3, 18))]
    if rng.random() < 0.5:
        words[0] = words[0].capitalize()
    if rng.random() < 0.2:
        words = [w.upper() for w in words]
    if rng.random() < 0.3:
        words.insert(0, rng.choice(OPENERS))
    text = " ".join(w for w in words if w)
    for _ in range(rng.randrange(0, 4)):
        pos = rng.randrange(len(text) + 1)
        text = text[:pos] + rng.choice(PUNCT_BITS) + text[pos:]
    contractions = ["didn't", "won't", "it's", "we'd", "y'all", "rock'n'roll", "5-star", "e-mail"]
    if rng.random() < 0.4:
        text += " " + rng.choice(contractions)
    return text + rng.choice([".", "!", "?", "", "!!", " :)", " :-(", " ;)", " <3"])


def mix(rng, pool, count):
    return " ".join(rng.choice(pool) for _ in range(count))


def sprinkle(rng, text, pool, count):
    for _ in range(count):
        pos = rng.randrange(len(text) + 1)
        text = text[:pos] + rng.choice(pool) + text[pos:]
    return text


def generate(seed=20240611):
    rng = random.Random(seed)
    kinds = [
        ("reviews", lambda: " ".join(review_sentence(rng) for _ in range(rng.randrange(1, 6)))),
        ("reviews with literal \\n", lambda: "\\n".join(review_sentence(rng) for _ in range(rng.randrange(2, 5)))),
        ("accents", lambda: review_sentence(rng) + " " + mix(rng, ACCENTED, rng.randrange(1, 6))),
        ("german and turkish", lambda: mix(rng, GERMAN + TURKISH, rng.randrange(1, 8)) + " " + review_sentence(rng)),
        ("cjk", lambda: mix(rng, CHINESE + JAPANESE + KOREAN, rng.randrange(1, 5)) +
         rng.choice(["", " " + mix(rng, CJK_EXTRA, 2), "abc" + rng.choice(CHINESE) + "def"])),
        ("emoji", lambda: sprinkle(rng, review_sentence(rng), EMOJI, rng.randrange(1, 6))),
        ("urls and e-mails", lambda: review_sentence(rng) + " " + mix(rng, URLS, rng.randrange(1, 4))),
        ("control characters", lambda: sprinkle(rng, review_sentence(rng), CONTROLS, rng.randrange(1, 8))),
        ("unicode spaces", lambda: sprinkle(rng, review_sentence(rng), SPACES, rng.randrange(1, 10))),
        ("combining marks", lambda: "".join(
            ch + "".join(rng.choice(MARKS) for _ in range(rng.randrange(0, 4)))
            for ch in review_sentence(rng)[: rng.randrange(5, 60)])),
        ("long words", lambda: long_words(rng)),
        ("numbers", lambda: review_sentence(rng) + " " + mix(rng, NUMBERS, rng.randrange(1, 6))),
        ("scripts", lambda: mix(rng, SCRIPTS, rng.randrange(1, 4)) + " " + review_sentence(rng)),
        ("special tokens", lambda: sprinkle(rng, review_sentence(rng), SPECIALS, rng.randrange(1, 4))),
        ("random code points", lambda: "".join(random_code_point(rng) for _ in range(rng.randrange(1, 40)))),
        ("random words of code points", lambda: " ".join(
            "".join(random_code_point(rng) for _ in range(rng.randrange(1, 6))) for _ in range(rng.randrange(1, 8)))),
    ]
    lines = ["", " ", "\t", "\u3000", "\x00", "[CLS]", "a", "A", "İ", "ß", "東", "!"]
    for _name, make in kinds:
        for _ in range(LINES_PER_KIND):
            lines.append(make())
    # A few full-length reviews so max_length=512 truncates too.
    for _ in range(20):
        lines.append(" ".join(review_sentence(rng) for _ in range(120)))
    assert all("\n" not in line for line in lines)
    return lines


def long_words(rng):
    choices = [
        "a" * 100, "a" * 101, "b" * 99 + "é", "b" * 100 + "é", "c" * 99 + "İ", "c" * 100 + "İ",
        "e\u0301" * 60, "ab" * 50, "ab" * 51, "supercalifragilisticexpialidocious" * 3,
        "Pneumonoultramicroscopicsilicovolcanoconiosis" * 2 + "x" * 20, "東" * 120, "ß" * 101,
        "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(90, 130))),
        "x" * 99 + "\u200b" + "y" * 5, "z" * 98 + "\ufe0f" + "zz",
    ]
    return review_sentence(rng) + " " + " ".join(rng.choice(choices) for _ in range(rng.randrange(1, 4)))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--seed", type=int, default=20240611)
    args = parser.parse_args()
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for line in generate(args.seed):
            f.write(line + "\n")


if __name__ == "__main__":
    main()
