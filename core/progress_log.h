// What rank 0 shows while training and what it writes to output_dir/metrics.jsonl.
//
// Every record is one JSON object with HF Trainer log_history keys:
//   training:   {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_s"}
//               (+ "loss_scale" in fp16 runs)
//   evaluation: {"step", "epoch", "eval_loss", "eval_accuracy", "eval_macro_f1", "eval_samples"}
// and the same text goes to stderr as one readable line. When stderr is a terminal a live
// `\r` status line (step/total, epoch, ETA) is redrawn between records; otherwise only the
// records are printed, one per line, so a log file stays clean.
//
// Epochs are fractional (completed epochs + position in the current one) and printed with two
// decimals, or with more when the run is still below 0.01 epoch, so a long epoch never shows
// 0.00 after thousands of steps.
#pragma once
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

namespace llmqs::core {

struct TrainRecord {
  int64_t step = 0;
  int64_t total_steps = 0;
  double epoch = 0.0;
  double loss = 0.0;           // mean of the step losses since the previous record (all ranks)
  double learning_rate = 0.0;  // the lr the last step used
  double grad_norm = 0.0;      // global norm before clipping, last step
  double tokens_per_s = 0.0;   // real (non-padding) tokens, all ranks, since the previous record
  double eta_s = 0.0;          // estimated seconds to the last step
  double loss_scale = 0.0;     // fp16 dynamic loss scale after the step; 0: not fp16 (not logged)
};

struct EvalRecord {
  int64_t step = 0;
  double epoch = 0.0;
  double loss = 0.0;
  double accuracy = 0.0;
  double macro_f1 = 0.0;
  int64_t samples = 0;
};

// "0.37", or "0.0012" (three significant digits) while 0 < epoch < 0.005.
std::string format_epoch(double epoch);
// "1h02m03s", "2m05s", "7s".
std::string format_duration(double seconds);
// "812", "12.3K", "4.56M".
std::string format_rate(double per_second);

// The JSON object (one line, no newline) for each kind of record.
std::string train_record_json(const TrainRecord& record);
std::string eval_record_json(const EvalRecord& record);

class ProgressLog {
 public:
  // `enabled` false (ranks other than 0): every call is a no-op and returns the JSON anyway.
  // metrics_path "" writes no file. `append` keeps an existing file (resume); otherwise it is
  // started afresh. `out` is the stream shown to the user (stderr in the CLI).
  ProgressLog(bool enabled, const std::string& metrics_path, bool append, std::FILE* out = stderr);
  ~ProgressLog();

  // A plain message line (finishes the live line first).
  void message(const std::string& text);
  // Redraws the live status line (terminal only, at most a few times a second).
  void status(int64_t step, int64_t total_steps, double epoch, double last_loss, double eta_s);
  // Writes the record to metrics.jsonl and stderr; returns its JSON line.
  std::string log_train(const TrainRecord& record);
  std::string log_eval(const EvalRecord& record);

  bool is_terminal() const { return terminal_; }

 private:
  void write_json_line(const std::string& json);
  void end_live_line();

  bool enabled_;
  bool terminal_ = false;
  bool live_line_open_ = false;
  std::FILE* out_;
  std::string metrics_path_;
  std::ofstream metrics_;
  std::chrono::steady_clock::time_point last_status_{};
};

}  // namespace llmqs::core
