// Rank 0's progress display and metrics.jsonl writer (see progress_log.h for the record keys).
#include "core/progress_log.h"

#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <stdexcept>

namespace llmqs::core {

namespace {

std::string printf_string(const char* format, double value) {
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, value);
  return buffer;
}

// Losses and rates as users read them; the JSON keeps full precision.
std::string format_loss(double loss) { return printf_string("%.4f", loss); }

}  // namespace

std::string format_epoch(double epoch) {
  if (epoch > 0.0 && epoch < 0.005) return printf_string("%.3g", epoch);
  return printf_string("%.2f", epoch);
}

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  const int64_t s = static_cast<int64_t>(std::llround(seconds));
  char buffer[48];
  if (s >= 3600) {
    std::snprintf(buffer, sizeof(buffer), "%lldh%02lldm%02llds", static_cast<long long>(s / 3600),
                  static_cast<long long>(s / 60 % 60), static_cast<long long>(s % 60));
  } else if (s >= 60) {
    std::snprintf(buffer, sizeof(buffer), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  } else {
    std::snprintf(buffer, sizeof(buffer), "%llds", static_cast<long long>(s));
  }
  return buffer;
}

std::string format_rate(double per_second) {
  if (per_second >= 1e9) return printf_string("%.2fG", per_second / 1e9);
  if (per_second >= 1e6) return printf_string("%.2fM", per_second / 1e6);
  if (per_second >= 1e4) return printf_string("%.1fK", per_second / 1e3);
  return printf_string("%.0f", per_second);
}

std::string train_record_json(const TrainRecord& r) {
  nlohmann::ordered_json j;
  j["step"] = r.step;
  j["epoch"] = r.epoch;
  j["loss"] = r.loss;
  j["learning_rate"] = r.learning_rate;
  j["grad_norm"] = r.grad_norm;
  j["tokens_per_s"] = r.tokens_per_s;
  if (r.loss_scale > 0.0) j["loss_scale"] = r.loss_scale;
  return j.dump();
}

std::string eval_record_json(const EvalRecord& r) {
  nlohmann::ordered_json j;
  j["step"] = r.step;
  j["epoch"] = r.epoch;
  j["eval_loss"] = r.loss;
  j["eval_accuracy"] = r.accuracy;
  j["eval_macro_f1"] = r.macro_f1;
  j["eval_samples"] = r.samples;
  return j.dump();
}

ProgressLog::ProgressLog(bool enabled, const std::string& metrics_path, bool append, std::FILE* out)
    : enabled_(enabled), out_(out), metrics_path_(metrics_path) {
  if (!enabled_) return;
  terminal_ = out_ != nullptr && isatty(fileno(out_));
  if (!metrics_path_.empty()) {
    metrics_.open(metrics_path_, append ? std::ios::app : std::ios::trunc);
    if (!metrics_) throw std::runtime_error(metrics_path_ + ": cannot open for writing");
  }
}

ProgressLog::~ProgressLog() {
  if (enabled_) end_live_line();
}

void ProgressLog::end_live_line() {
  if (live_line_open_ && out_) {
    std::fputs("\n", out_);
    std::fflush(out_);
  }
  live_line_open_ = false;
}

void ProgressLog::message(const std::string& text) {
  if (!enabled_ || !out_) return;
  end_live_line();
  std::fprintf(out_, "%s\n", text.c_str());
  std::fflush(out_);
}

void ProgressLog::status(int64_t step, int64_t total_steps, double epoch, double last_loss, double eta_s) {
  if (!enabled_ || !terminal_) return;
  const auto now = std::chrono::steady_clock::now();
  // Redrawing on every step of a fast run would cost more than the step itself.
  if (step != total_steps && now - last_status_ < std::chrono::milliseconds(250)) return;
  last_status_ = now;
  std::string line = "  step " + std::to_string(step) + "/" + std::to_string(total_steps) + " | epoch " +
                     format_epoch(epoch);
  if (std::isfinite(last_loss)) line += " | loss " + format_loss(last_loss);
  line += " | ETA " + format_duration(eta_s);
  // \x1b[K clears what a longer previous line left behind.
  std::fprintf(out_, "\r%s\x1b[K", line.c_str());
  std::fflush(out_);
  live_line_open_ = true;
}

void ProgressLog::write_json_line(const std::string& json) {
  if (!metrics_.is_open()) return;
  metrics_ << json << '\n';
  metrics_.flush();
  if (!metrics_) throw std::runtime_error(metrics_path_ + ": write failed");
}

std::string ProgressLog::log_train(const TrainRecord& r) {
  const std::string json = train_record_json(r);
  if (!enabled_) return json;
  write_json_line(json);
  message("step " + std::to_string(r.step) + "/" + std::to_string(r.total_steps) + " | epoch " +
          format_epoch(r.epoch) + " | loss " + format_loss(r.loss) + " | lr " +
          printf_string("%.3e", r.learning_rate) + " | grad_norm " + printf_string("%.3f", r.grad_norm) + " | " +
          format_rate(r.tokens_per_s) + " tok/s" +
          (r.loss_scale > 0.0 ? " | loss_scale " + printf_string("%g", r.loss_scale) : std::string()) + " | ETA " +
          format_duration(r.eta_s));
  return json;
}

std::string ProgressLog::log_eval(const EvalRecord& r) {
  const std::string json = eval_record_json(r);
  if (!enabled_) return json;
  write_json_line(json);
  message("eval step " + std::to_string(r.step) + " | epoch " + format_epoch(r.epoch) + " | eval_loss " +
          format_loss(r.loss) + " | eval_accuracy " + printf_string("%.4f", r.accuracy) + " | eval_macro_f1 " +
          printf_string("%.4f", r.macro_f1) + " | " + std::to_string(r.samples) + " examples");
  return json;
}

}  // namespace llmqs::core
