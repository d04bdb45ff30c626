// The Yelp-like sample generator (see sample_generator.h).
//
// How a review is made: draw a latent star rating s (uniform 1..5) and a business kind (restaurant,
// cafe, bar, hotel, salon, auto shop, clinic, weighted like Yelp's mix); draw a target length from a
// log-normal (median ~92 words, mean ~130, ~3% above 400); then write sentences until the length is
// reached: neutral filler about the visit, opinion sentences whose polarity (-2, -1, +1, +2) is drawn
// from a distribution that depends on s (so adjacent classes overlap), "but" sentences that mix two
// polarities, negations that flip an adjective ("not bad", "not that great"), an occasional star
// mention and a closing line. The written label is s with 10% noise (moved one class up or down; 5% at
// 1 and 5 stars, which keeps the classes balanced), so a classifier learns it well above chance but
// never perfectly: naive Bayes on words scores ~64% on the default test split (tests/data_sample_test).
//
// All randomness is integer: xoshiro256** seeded through splitmix64, choices by multiply-shift, and
// lengths by integer interpolation in a fixed quantile table, so files are byte-identical everywhere.
#include "data/sample_generator.h"

#include <utf8proc.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <stdexcept>
#include <system_error>
#include <unistd.h>

namespace llmqs::data {

namespace {

// ---- random numbers ------------------------------------------------------------------------------

uint64_t splitmix64(uint64_t& state) {
  uint64_t z = (state += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

class Rng {  // xoshiro256**
 public:
  Rng(uint64_t seed, uint64_t stream) {
    uint64_t state = seed ^ (stream * 0xd1342543de82ef95ull);
    for (auto& word : s_) word = splitmix64(state);
  }
  uint64_t next() {
    const uint64_t result = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return result;
  }
  // Uniform in [0, n) by multiply-shift (bias below 2^-40 for the n used here).
  uint64_t below(uint64_t n) { return static_cast<uint64_t>((static_cast<unsigned __int128>(next()) * n) >> 64); }
  bool per_mille(int p) { return below(1000) < static_cast<uint64_t>(p); }

 private:
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
};

// Review length in words: quantiles of a log-normal (median 92, sigma 0.8) at i/256, i = 0..256, clamped
// to [4, 1000] words. Made once with Python:
//   [round(92 * exp(0.8 * NormalDist().inv_cdf(i / 256))) for i in range(1, 256)], plus 4 and 1000 at the ends.
// Sampling picks a bin with 8 random bits and interpolates inside it with 32 more.
constexpr std::array<int16_t, 257> kLengthQuantiles = {
    4,   11,  13,  15,  16,  18,  19,  20,  21,  22,  22,  23,  24,  25,  26,  26,  27,  28,  28,  29,  30,  30,
    31,  31,  32,  33,  33,  34,  34,  35,  36,  36,  37,  37,  38,  38,  39,  39,  40,  40,  41,  42,  42,  43,
    43,  44,  44,  45,  45,  46,  46,  47,  47,  48,  48,  49,  49,  50,  50,  51,  52,  52,  53,  53,  54,  54,
    55,  55,  56,  56,  57,  57,  58,  58,  59,  60,  60,  61,  61,  62,  62,  63,  63,  64,  64,  65,  66,  66,
    67,  67,  68,  68,  69,  70,  70,  71,  71,  72,  72,  73,  74,  74,  75,  75,  76,  77,  77,  78,  79,  79,
    80,  80,  81,  82,  82,  83,  84,  84,  85,  86,  86,  87,  88,  88,  89,  90,  91,  91,  92,  93,  93,  94,
    95,  96,  96,  97,  98,  99,  100, 100, 101, 102, 103, 104, 104, 105, 106, 107, 108, 109, 109, 110, 111, 112,
    113, 114, 115, 116, 117, 118, 119, 120, 121, 122, 123, 124, 125, 126, 127, 128, 129, 130, 131, 132, 134, 135,
    136, 137, 138, 140, 141, 142, 144, 145, 146, 148, 149, 150, 152, 153, 155, 156, 158, 159, 161, 163, 164, 166,
    168, 169, 171, 173, 175, 177, 179, 181, 183, 185, 187, 189, 192, 194, 196, 199, 201, 204, 206, 209, 212, 215,
    218, 221, 224, 227, 231, 234, 238, 242, 246, 250, 255, 259, 264, 269, 274, 280, 286, 292, 299, 306, 314, 322,
    331, 341, 352, 363, 377, 391, 408, 428, 451, 479, 515, 564, 636, 773, 1000};

int64_t draw_length_words(Rng& rng) {
  const uint64_t r = rng.next();
  const size_t bin = static_cast<size_t>(r >> 56);
  const int64_t lo = kLengthQuantiles[bin], hi = kLengthQuantiles[bin + 1];
  const int64_t frac = static_cast<int64_t>((r >> 24) & 0xffffffffull);
  return lo + (((hi - lo) * frac) >> 32);
}

// ---- the grammar ---------------------------------------------------------------------------------
// A template is text with {slot} references; a slot is a list of alternatives, which may hold slots
// themselves. A business kind's own slots (place, item, aspect, staff, kind_filler, ...) are looked up
// before the global ones.
// Three slots are computed, not listed: {price}, {minutes}, {number}.

using Choices = std::vector<const char*>;
using SlotTable = std::map<std::string, Choices>;

struct BusinessKind {
  const char* name;
  int weight;  // out of 100
  SlotTable slots;
};

const SlotTable& global_slots() {
  static const SlotTable table = {
      // polarity +2, +1, -1, -2 adjectives; intensifiers carry their own trailing space
      {"adj_p2", {"amazing", "incredible", "outstanding", "fantastic", "excellent", "phenomenal", "perfect",
                  "superb", "wonderful", "awesome", "spectacular", "top notch", "flawless", "exceptional",
                  "out of this world"}},
      {"adj_p1", {"good", "nice", "decent", "pleasant", "solid", "enjoyable", "satisfying", "above average",
                  "pretty good", "fine", "reliable", "tasty"}},
      {"adj_n1", {"mediocre", "bland", "disappointing", "underwhelming", "below average", "forgettable",
                  "just okay", "lacking", "so-so", "hit or miss", "inconsistent", "a bit off"}},
      {"adj_n2", {"terrible", "awful", "horrible", "disgusting", "atrocious", "dreadful", "pathetic",
                  "unacceptable", "a complete joke", "abysmal", "the worst"}},
      {"int_p2", {"", "", "", "absolutely ", "truly ", "just ", "really ", "simply ", "honestly "}},
      {"int_p1", {"", "", "", "pretty ", "fairly ", "quite ", "reasonably ", "mostly "}},
      {"int_n1", {"", "", "", "a little ", "kind of ", "somewhat ", "rather ", "slightly "}},
      {"int_n2", {"", "", "", "absolutely ", "truly ", "just ", "really ", "completely "}},

      {"opinion_p2",
       {"The {aspect} was {int_p2}{adj_p2}.", "The {aspect} here is {int_p2}{adj_p2}!",
        "I have to say the {aspect} was {adj_p2}.", "Everything about the {aspect} was {adj_p2}.",
        "Best {item} I have ever had!", "I loved the {aspect}, {int_p2}{adj_p2}.",
        "Our {staff} was {adj_p2} and made us feel welcome.",
        "The {item} was {int_p2}{adj_p2}, I would order it again in a heartbeat.",
        "Can't say enough good things about the {aspect}.", "Hands down the best {place} in town.",
        "Highly recommend the {item}!", "We were blown away by the {aspect}.",
        "The {aspect} was {adj_p2}, and I mean {adj_p2}."}},
      {"opinion_p1",
       {"The {aspect} was {int_p1}{adj_p1}.", "I thought the {aspect} was {adj_p1}.",
        "The {item} was {adj_p1}, not the best I have had but I would get it again.",
        "Our {staff} was {adj_p1} and checked on us a few times.", "The {aspect} was not bad at all.",
        "The {aspect} wasn't {adj_n1} like some reviews said.", "I liked the {aspect}.",
        "The {aspect} was {adj_p1} for the price.", "No complaints about the {aspect}.",
        "The {item} was {adj_p1} and came out quickly.", "The {aspect} was not {adj_n2}, actually {adj_p1}."}},
      {"opinion_n1",
       {"The {aspect} was {int_n1}{adj_n1}.", "The {aspect} could have been better.",
        "I expected more from the {aspect}.", "The {aspect} was not {adj_p1}.",
        "The {aspect} was not that {adj_p2}.", "The {item} was {adj_n1} and a little overpriced.",
        "Our {staff} seemed distracted and forgot about us for a while.",
        "The {aspect} wasn't as {adj_p1} as I remembered.", "Sadly the {aspect} was {adj_n1}.",
        "We waited {minutes} minutes for the {item}, which was {adj_n1}."}},
      {"opinion_n2",
       {"The {aspect} was {int_n2}{adj_n2}.", "Worst {item} I have ever had.",
        "The {aspect} was {adj_n2}, I could not believe it.",
        "Our {staff} was {adj_n2} and rude to us the whole time.", "Avoid this {place} at all costs.",
        "The {item} was {adj_n2}, we sent it back.", "I have never been so disappointed by a {place}.",
        "The {aspect} was {int_n2}{adj_n2} and nobody seemed to care.", "Complete waste of money.",
        "The {aspect} was not even close to {adj_p1}."}},
      {"closing_p2",
       {"Will definitely be back!", "Can't wait to come back!", "Highly recommend this {place}!",
        "This is my new favorite {place}.", "Thank you {name} and team, you guys rock!"}},
      {"closing_p1",
       {"I would come back.", "Worth a visit if you are in the area.", "I would recommend it.",
        "We will probably be back.", "Good enough that I will return."}},
      {"closing_n1",
       {"Not sure I will be back.", "Might give it another try, but I'm not in a hurry.",
        "There are better options nearby.", "I wanted to like this {place}, but it was just okay.",
        "Maybe it was an off night."}},
      {"closing_n2",
       {"Never again.", "Save your money and go somewhere else.", "I will never come back here.",
        "Do not waste your time.", "Zero stars if I could."}},

      {"filler",
       {"We came here on a {day} {time_of_day} with {company}.", "I came here with {company} last {day}.",
        "It was my {companion}'s birthday, so we decided to try this {place}.",
        "A friend told me about this {place} a while ago.", "I have been here {count} times now.",
        "This was our first time at this {place}.", "The {place} is located {location}.", "Parking {parking}.",
        "We got there around {hour} and it was {crowd}.", "They are open until {hour} on weekends.",
        "It is right next to {neighbor}.", "I found this {place} on Yelp while visiting {city}.",
        "Our {staff}, {name}, told us \"{quote}\".", "The sign on the door says \"{sign}\".",
        "I usually don't write reviews, but here goes.", "The {place} recently changed owners.",
        "They accept cash and cards, and there is an ATM inside.", "It took a while to find the entrance.",
        "Prices are around ${price} per person.", "Update: I came back {count} weeks later.",
        "Long story short, here is what happened.", "My {companion} had heard good and bad things.",
        "We spent about ${price} in total, tip included.", "The whole visit took about {minutes} minutes.",
        "I live {count} minutes away, so I pass by this {place} all the time.",
        "The {place} was {crowd} when we walked in.", "We were greeted as soon as we walked in.",
        "There is a TV in the corner playing the news.", "The {place} has been around for {count} years.",
        "Some background: I am pretty picky about {aspect}.", "I checked in on Yelp and got {percent}% off."}},
      {"day", {"Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"}},
      {"time_of_day", {"morning", "afternoon", "evening", "night"}},
      {"company", {"my wife", "my husband", "my family", "a few friends", "coworkers", "my boyfriend",
                   "my girlfriend", "my parents", "the kids", "a big group", "my best friend"}},
      {"companion", {"wife", "husband", "friend", "mom", "dad", "sister", "brother", "boyfriend", "girlfriend",
                     "coworker", "roommate"}},
      {"name", {"Maria", "Tony", "Jessica", "Mike", "Ashley", "Carlos", "Emily", "Kevin", "Nicole", "David",
                "Sarah", "Chris", "Jenny", "José", "Zoë", "Andre"}},
      {"location", {"in a strip mall off {street}", "downtown", "near the airport", "on the Strip",
                    "across from the mall", "inside the casino", "on {street}", "in Old Town",
                    "a block from the university", "next to the highway exit"}},
      {"street", {"Main Street", "Central Ave", "Camelback Road", "Flamingo", "Rainbow Blvd", "Queen Street",
                  "5th Ave", "Scottsdale Road", "Spadina", "Forbes Ave"}},
      {"city", {"Las Vegas", "Phoenix", "Toronto", "Charlotte", "Pittsburgh", "Madison", "Cleveland",
                "Montréal", "Scottsdale", "Tempe", "Henderson", "Champaign"}},
      {"parking", {"is in the back", "is limited on weekends", "is free in the garage", "is street only",
                   "is easy to find", "is validated for two hours", "is shared with the grocery store"}},
      {"hour", {"9pm", "10pm", "midnight", "2am", "11am", "noon", "7:30", "6pm"}},
      {"crowd", {"packed", "half empty", "pretty busy", "quiet", "dead", "full of families", "loud"}},
      {"neighbor", {"a Starbucks", "the gas station", "a Walmart", "the movie theater", "a nail salon",
                    "the post office", "a bank"}},
      {"count", {"two", "three", "four", "five", "a few", "several", "a dozen", "2", "3", "10", "20"}},
      {"quote", {"the {item} is our most popular", "enjoy", "we are out of the {item} today",
                 "it will be a few minutes", "have a great night", "thanks for coming in",
                 "we close in ten minutes", "is this your first time here?", "no substitutions, sorry"}},
      {"sign", {"cash only", "no outside food or drink", "please wait to be seated", "open late", "now hiring",
                "restrooms for customers only"}},
      {"stars_word", {"One", "Two", "Three", "Four", "Five"}},
      {"percent", {"10", "15", "20", "25"}},
      {"floor", {"second", "third", "tenth", "top"}},
  };
  return table;
}

const std::vector<BusinessKind>& business_kinds() {
  static const std::vector<BusinessKind> kinds = {
      {"restaurant", 45,
       {{"place", {"restaurant", "place", "spot", "diner", "bistro", "joint", "Italian place", "taco shop",
                   "sushi bar", "pizza place", "burger joint", "Thai restaurant", "steakhouse", "café"}},
        {"item", {"chicken sandwich", "pad thai", "carne asada tacos", "margherita pizza", "spicy tuna roll",
                  "burger", "fish and chips", "ribeye", "caesar salad", "pho", "lasagna", "fried rice",
                  "jalapeño poppers", "crème brûlée", "french toast", "clam chowder", "wings", "ramen",
                  "enchiladas", "chicken tikka masala", "entrée special", "brisket"}},
        {"aspect", {"food", "service", "atmosphere", "decor", "portion size", "price", "wait", "drink menu",
                    "dessert", "staff", "menu", "music", "patio", "bread", "coffee", "sauce", "seasoning"}},
        {"staff", {"server", "waitress", "waiter", "bartender", "host", "manager", "hostess"}},
        {"side", {"fries", "rice", "a side salad", "mashed potatoes", "coleslaw", "garlic bread", "beans",
                  "sweet potato fries"}},
        {"kind_filler",
         {"We started with the {item} and then split the {item}.",
          "The menu has a lot of options, including the {item} and the {item}.",
          "The {item} came with {side}.", "We were seated {seat}.", "My {companion} ordered the {item}.",
          "They bring out chips and salsa while you look at the menu.",
          "They have a happy hour from 3 to 6 on weekdays."}},
        {"seat", {"right away", "by the window", "at the bar", "on the patio", "in a booth",
                  "near the kitchen"}}}},
      {"cafe", 12,
       {{"place", {"cafe", "bakery", "coffee shop", "donut shop", "tea house"}},
        {"item", {"latte", "croissant", "blueberry muffin", "cappuccino", "iced coffee", "almond croissant",
                  "chai tea", "breakfast burrito", "bagel", "scone", "cold brew", "matcha latte"}},
        {"aspect", {"coffee", "pastry case", "service", "seating", "wifi", "price", "atmosphere", "line",
                    "espresso"}},
        {"staff", {"barista", "cashier", "owner"}},
        {"kind_filler",
         {"I stopped in before work to grab the {item}.", "They have a small patio and a few tables inside.",
          "I ordered the {item} and the {item} to go.", "There is a line out the door most mornings.",
          "Lots of people work on their laptops here."}}}},
      {"bar", 10,
       {{"place", {"bar", "pub", "lounge", "sports bar", "brewery", "wine bar"}},
        {"item", {"IPA", "old fashioned", "margarita", "happy hour nachos", "flight of beers", "mojito",
                  "house red", "whiskey sour", "loaded tots"}},
        {"aspect", {"drinks", "beer selection", "music", "crowd", "bartender", "price", "vibe", "happy hour"}},
        {"staff", {"bartender", "bouncer", "server"}},
        {"kind_filler",
         {"We came for happy hour after work.", "They have {count} TVs showing the game.",
          "There was a live band playing that night.", "I ordered the {item} and my {companion} had the {item}.",
          "Trivia night is on {day}."}}}},
      {"hotel", 10,
       {{"place", {"hotel", "resort", "motel", "casino hotel"}},
        {"item", {"king suite", "room", "breakfast buffet", "room service", "spa package"}},
        {"aspect", {"room", "bed", "front desk", "pool", "bathroom", "check in", "view", "location",
                    "housekeeping"}},
        {"staff", {"front desk clerk", "concierge", "valet", "housekeeper"}},
        {"kind_filler",
         {"We stayed {count} nights for a conference.", "We booked the {item} through their website.",
          "Check in is at 3pm and check out at 11am.", "The hotel has a pool, a gym and a small casino.",
          "Our room was on the {floor} floor."}}}},
      {"salon", 8,
       {{"place", {"salon", "nail salon", "spa", "barbershop"}},
        {"item", {"haircut", "gel manicure", "pedicure", "deep tissue massage", "highlights", "beard trim",
                  "facial"}},
        {"aspect", {"service", "price", "result", "waiting area", "cleanliness", "stylist"}},
        {"staff", {"stylist", "nail tech", "receptionist", "barber", "therapist"}},
        {"kind_filler",
         {"I booked the {item} online for {day} {time_of_day}.",
          "I have been getting my hair done here for {count} years.", "My appointment was at {hour}.",
          "They offered me water and a magazine while I waited."}}}},
      {"auto", 8,
       {{"place", {"auto shop", "car wash", "garage", "tire shop", "dealership"}},
        {"item", {"oil change", "brake job", "tire rotation", "full detail", "transmission repair",
                  "inspection", "battery replacement"}},
        {"aspect", {"work", "price", "customer service", "communication", "waiting room", "turnaround"}},
        {"staff", {"mechanic", "service advisor", "technician", "owner"}},
        {"kind_filler",
         {"I brought my car in for the {item}.", "They gave me a quote over the phone.",
          "My check engine light came on, so I stopped by.", "I dropped off my car in the {time_of_day}.",
          "They said it would take about {minutes} minutes."}}}},
      {"clinic", 7,
       {{"place", {"dental office", "clinic", "urgent care", "vet", "doctor's office"}},
        {"item", {"cleaning", "check up", "x-ray", "filling", "flu shot", "appointment"}},
        {"aspect", {"staff", "wait", "front office", "bedside manner", "billing", "office"}},
        {"staff", {"dentist", "hygienist", "doctor", "nurse", "receptionist", "vet"}},
        {"kind_filler",
         {"I had an appointment for the {item}.", "I am a new patient and needed the {item}.",
          "They accept most insurance plans.", "I filled out paperwork for about {minutes} minutes."}}}},
  };
  return kinds;
}

// Per-mille weights of an opinion's polarity (-2, -1, +1, +2) given the latent star rating.
constexpr int kPolarityWeights[5][4] = {
    {700, 230, 50, 20},   // 1 star
    {230, 560, 170, 40},  // 2 stars
    {60, 370, 470, 100},  // 3 stars
    {20, 130, 530, 320},  // 4 stars
    {10, 40, 250, 700},   // 5 stars
};
constexpr int kLabelNoisePerMille = 100;
const char* const kPolaritySuffix[4] = {"n2", "n1", "p1", "p2"};  // index = polarity class 0..3

class ReviewWriter {
 public:
  explicit ReviewWriter(Rng& rng) : rng_(rng) {}

  // Returns the review text; stars is the latent rating 1..5.
  std::string write(int stars) {
    stars_ = stars;
    kind_ = &pick_kind();
    used_fillers_.clear();
    const int64_t target = draw_length_words(rng_);
    std::vector<std::string> sentences;
    int64_t words = 0;
    bool has_opinion = false;
    auto add = [&](std::string s) {
      words += count_review_words(s);
      sentences.push_back(std::move(s));
    };

    if (target <= 12 || rng_.per_mille(600)) {  // most real reviews open with the verdict
      add(opinion());
      has_opinion = true;
    } else {
      add(filler());
    }
    const bool closes = rng_.per_mille(650);
    const int64_t body_target = target - (closes ? 5 : 0);
    while (words < body_target) {
      const uint64_t r = rng_.below(100);
      if (r < 38) {
        add(opinion());
        has_opinion = true;
      } else if (r < 46) {
        add(mixed());
        has_opinion = true;
      } else {
        add(filler());
      }
    }
    if (!has_opinion) add(opinion());
    if (rng_.per_mille(80)) add(star_mention());
    if (closes) add(expand_new("{closing_" + std::string(kPolaritySuffix[polarity_class()]) + "}"));

    std::string text;
    for (size_t i = 0; i < sentences.size(); ++i) {
      if (i > 0) {
        // YelpReviewFull stores paragraph breaks as the two characters backslash, n.
        if (sentences.size() > 3 && rng_.per_mille(100)) {
          text += rng_.per_mille(700) ? "\\n\\n" : "\\n";
        } else {
          text += ' ';
        }
      }
      text += sentences[i];
    }
    if (rng_.per_mille(30)) {  // some people never press shift
      for (char& c : text) if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    }
    return text;
  }

 private:
  const BusinessKind& pick_kind() {
    int r = static_cast<int>(rng_.below(100));
    for (const auto& kind : business_kinds()) {
      if (r < kind.weight) return kind;
      r -= kind.weight;
    }
    return business_kinds().front();
  }

  int polarity_class() {
    const int* w = kPolarityWeights[stars_ - 1];
    int r = static_cast<int>(rng_.below(1000));
    for (int c = 0; c < 3; ++c) {
      if (r < w[c]) return c;
      r -= w[c];
    }
    return 3;
  }

  const Choices& slot(const std::string& name) {
    auto it = kind_->slots.find(name);
    if (it != kind_->slots.end()) return it->second;
    it = global_slots().find(name);
    if (it == global_slots().end()) throw std::logic_error("sample generator: unknown slot {" + name + "}");
    return it->second;
  }

  const char* choose(const std::string& name) {
    const Choices& choices = slot(name);
    return choices[rng_.below(choices.size())];
  }

  void expand(const char* t, std::string& out, int depth) {
    if (depth > 4) throw std::logic_error("sample generator: slots nest too deeply");
    for (const char* p = t; *p;) {
      if (*p != '{') {
        out.push_back(*p++);
        continue;
      }
      const char* close = std::strchr(p, '}');
      const std::string name(p + 1, close);
      p = close + 1;
      if (name == "price") {
        out += std::to_string(8 + rng_.below(73));
        if (rng_.per_mille(300)) out += rng_.per_mille(500) ? ".99" : ".50";
      } else if (name == "minutes") {
        out += std::to_string(5 * (1 + rng_.below(18)));
      } else {
        expand(choose(name), out, depth + 1);
      }
    }
  }

  std::string expand_new(const std::string& t) {
    std::string out;
    expand(t.c_str(), out, 0);
    const char first = out.empty() ? '\0' : out.front();
    if (first >= 'a' && first <= 'z') out.front() = static_cast<char>(first - 'a' + 'A');
    return out;
  }

  std::string opinion() {
    const int c = polarity_class();
    std::string s = expand_new(std::string("{opinion_") + kPolaritySuffix[c] + "}");
    if (c == 0 || c == 3) emphasize(s);
    return s;
  }

  // Strong opinions sometimes get exclamation marks or are shouted in capitals.
  void emphasize(std::string& s) {
    if (rng_.per_mille(150) && !s.empty() && (s.back() == '.' || s.back() == '!')) {
      s.back() = '!';
      if (rng_.per_mille(500)) s += "!!";
    } else if (rng_.per_mille(40)) {
      for (char& ch : s) if (ch >= 'a' && ch <= 'z') ch = static_cast<char>(ch - 'a' + 'A');
    }
  }

  // Two aspects with independently drawn polarities: "but" when the signs differ.
  std::string mixed() {
    const int a = polarity_class(), b = polarity_class();
    std::string first_aspect = choose("aspect"), second_aspect = choose("aspect");
    for (int tries = 0; tries < 4 && second_aspect == first_aspect; ++tries) second_aspect = choose("aspect");
    const std::string adj_a = std::string("{int_") + kPolaritySuffix[a] + "}{adj_" + kPolaritySuffix[a] + "}";
    const std::string adj_b = std::string("{int_") + kPolaritySuffix[b] + "}{adj_" + kPolaritySuffix[b] + "}";
    const bool same_sign = (a < 2) == (b < 2);
    if (!same_sign && rng_.per_mille(300)) {
      return expand_new("Although the " + first_aspect + " was " + adj_a + ", the " + second_aspect + " was " +
                        adj_b + ".");
    }
    return expand_new("The " + first_aspect + " was " + adj_a + (same_sign ? ", and the " : ", but the ") +
                      second_aspect + " was " + adj_b + ".");
  }

  // Neutral sentences; one already used in this review is drawn again (up to 3 times) so that long
  // reviews do not repeat themselves word for word.
  std::string filler() {
    std::string s;
    for (int tries = 0; tries < 4; ++tries) {
      s = expand_new(rng_.per_mille(350) ? "{kind_filler}" : "{filler}");
      if (used_fillers_.insert(s).second) break;
    }
    return s;
  }

  std::string star_mention() {
    static const char* const forms[] = {"{N} {stars}.", "Giving it {N} {stars}.", "{N} {stars} from me.",
                                        "{N} {stars} for the {aspect}."};
    std::string number = rng_.per_mille(500) ? global_slots().at("stars_word")[stars_ - 1] : std::to_string(stars_);
    std::string form = forms[rng_.below(4)];
    form.replace(form.find("{N}"), 3, number);
    form.replace(form.find("{stars}"), 7, stars_ == 1 ? "star" : "stars");
    return expand_new(form);
  }

  Rng& rng_;
  int stars_ = 3;
  const BusinessKind* kind_ = nullptr;
  std::set<std::string> used_fillers_;
};

std::string csv_quote(const std::string& field) {
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out += '"';
    out += c;
  }
  out += '"';
  return out;
}

void write_file_atomically(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw std::runtime_error(path + ": cannot create file");
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw std::runtime_error(path + ": write failed (disk full?)");
    }
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) {
    std::remove(tmp.c_str());
    throw std::runtime_error(path + ": cannot rename temporary file into place: " + ec.message());
  }
}

std::string write_split(uint64_t seed, uint64_t stream, int64_t count) {
  Rng rng(seed, stream);
  ReviewWriter writer(rng);
  std::string csv;
  csv.reserve(static_cast<size_t>(count) * 800);
  for (int64_t i = 0; i < count; ++i) {
    const int stars = 1 + static_cast<int>(rng.below(5));
    // Noise moves a label one class; the end classes move half as often, which keeps classes balanced.
    int label = stars;
    const bool end_class = stars == 1 || stars == 5;
    if (rng.per_mille(end_class ? kLabelNoisePerMille / 2 : kLabelNoisePerMille)) {
      label = stars == 1 ? 2 : stars == 5 ? 4 : stars + (rng.per_mille(500) ? 1 : -1);
    }
    const std::string text = writer.write(stars);
    csv += "\"" + std::to_string(label) + "\"," + csv_quote(text) + "\n";
  }
  return csv;
}

// Lower-case and strip accents the way BERT's uncased basic tokenizer does (NFD, drop marks).
std::string normalize_uncased(const std::string& word) {
  utf8proc_uint8_t* mapped = nullptr;
  const auto length = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(word.c_str()), 0, &mapped,
                                   static_cast<utf8proc_option_t>(UTF8PROC_NULLTERM | UTF8PROC_STABLE |
                                                                  UTF8PROC_DECOMPOSE | UTF8PROC_STRIPMARK |
                                                                  UTF8PROC_CASEFOLD));
  if (length < 0) throw std::logic_error("sample generator: invalid UTF-8 in lexicon word " + word);
  std::string out(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length));
  std::free(mapped);
  return out;
}

bool is_ascii_punctuation(unsigned char c) {
  return (c >= 33 && c <= 47) || (c >= 58 && c <= 64) || (c >= 91 && c <= 96) || (c >= 123 && c <= 126);
}

// Words of a template as BERT's basic tokenizer would split them (blank and punctuation boundaries),
// with {slot} references removed.
void collect_words(const char* t, std::set<std::string>& words) {
  std::string current;
  auto flush = [&] {
    if (!current.empty()) words.insert(normalize_uncased(current));
    current.clear();
  };
  for (const char* p = t; *p; ++p) {
    const auto c = static_cast<unsigned char>(*p);
    if (c == '{') {
      flush();
      p = std::strchr(p, '}');
    } else if (c == ' ' || is_ascii_punctuation(c)) {
      flush();
    } else {
      current.push_back(*p);
    }
  }
  flush();
}

}  // namespace

int64_t count_review_words(const std::string& text) {
  int64_t words = 0;
  bool in_word = false;
  for (size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    bool blank = c == ' ' || c == '\t' || c == '\n' || c == '\r';
    if (c == '\\' && i + 1 < text.size() && text[i + 1] == 'n') {
      blank = true;
      ++i;
    }
    if (!blank && !in_word) ++words;
    in_word = !blank;
  }
  return words;
}

std::vector<std::string> sample_vocabulary() {
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  std::set<std::string> present(vocab.begin(), vocab.end());
  auto add = [&](const std::string& token) {
    if (present.insert(token).second) vocab.push_back(token);
  };
  for (int c = 33; c < 127; ++c) {
    if (is_ascii_punctuation(static_cast<unsigned char>(c))) add(std::string(1, static_cast<char>(c)));
  }
  const std::string alnum = "0123456789abcdefghijklmnopqrstuvwxyz";
  for (char c : alnum) add(std::string(1, c));
  for (char c : alnum) add("##" + std::string(1, c));
  static const char* const suffixes[] = {"s", "es", "ed", "d", "ing", "ly", "er", "est"};
  for (const char* s : suffixes) add(std::string("##") + s);
  for (const char* s : {"y", "ful", "ness", "able", "th"}) add(std::string("##") + s);

  std::set<std::string> words;
  for (const auto& [name, choices] : global_slots()) {
    for (const char* t : choices) collect_words(t, words);
  }
  for (const auto& kind : business_kinds()) {
    for (const auto& [name, choices] : kind.slots) {
      for (const char* t : choices) collect_words(t, words);
    }
  }
  // Fixed text the writer adds outside the tables.
  for (const char* t : {"Giving it from me for the star stars Although The was and but"}) collect_words(t, words);

  // Leave out inflected forms whose stem is a word too, so WordPiece splits them (servers = server ##s).
  for (const std::string& w : words) {
    bool derived = false;
    for (const char* s : suffixes) {
      const size_t n = std::strlen(s);
      if (w.size() >= n + 3 && w.compare(w.size() - n, n, s) == 0 && words.count(w.substr(0, w.size() - n))) {
        derived = true;
        break;
      }
    }
    if (!derived) add(w);
  }
  return vocab;
}

void write_sample_dataset(const std::string& dir, const SampleOptions& options) {
  if (options.train_size < 1) throw std::invalid_argument("sample dataset: train_size must be at least 1");
  if (options.test_size < 1) throw std::invalid_argument("sample dataset: test_size must be at least 1");
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec || !std::filesystem::is_directory(dir)) {
    throw std::runtime_error(dir + ": cannot create output directory" + (ec ? ": " + ec.message() : ""));
  }
  const std::filesystem::path base(dir);
  // Separate streams: the test split stays the same when only train_size changes.
  write_file_atomically((base / "train.csv").string(), write_split(options.seed, 1, options.train_size));
  write_file_atomically((base / "test.csv").string(), write_split(options.seed, 2, options.test_size));
  std::string vocab_text;
  for (const std::string& token : sample_vocabulary()) vocab_text += token + "\n";
  write_file_atomically((base / "vocab.txt").string(), vocab_text);
}

}  // namespace llmqs::data
