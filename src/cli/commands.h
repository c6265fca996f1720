// Each `statelm <command>` lives in its own cmd_<name>.cpp and registers itself here.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>

namespace statelm::cli {

// A registered command's action; it may throw statelm::Error, which main() prints as one line
// ("statelm: error: <message>") with a non-zero exit.
using Action = std::function<int()>;

void add_inspect_command(CLI::App& app, Action& action);
void add_tokenize_commands(CLI::App& app, Action& action);  // tokenize + detokenize
void add_logits_command(CLI::App& app, Action& action);
void add_generate_command(CLI::App& app, Action& action);
void add_run_command(CLI::App& app, Action& action);
void add_serve_command(CLI::App& app, Action& action);
void add_perplexity_command(CLI::App& app, Action& action);
void add_bench_command(CLI::App& app, Action& action);

}  // namespace statelm::cli
