// statelm command-line entry point: parses the command, runs it, turns errors into one line.
#include <cstdio>
#include <exception>

#include "cli/commands.h"
#include "cli/version.h"
#include "core/error.h"

int main(int argc, char** argv) {
  CLI::App app{"statelm: inference engine for state-space and hybrid language models"};
  app.require_subcommand(1);
  app.set_version_flag("--version", statelm::cli::version_string());
  statelm::cli::Action action;
  statelm::cli::add_inspect_command(app, action);
  statelm::cli::add_tokenize_commands(app, action);
  statelm::cli::add_logits_command(app, action);
  statelm::cli::add_generate_command(app, action);
  statelm::cli::add_run_command(app, action);
  statelm::cli::add_serve_command(app, action);
  statelm::cli::add_perplexity_command(app, action);
  statelm::cli::add_bench_command(app, action);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    return action ? action() : 0;
  } catch (const statelm::Error& e) {
    std::fprintf(stderr, "statelm: error: %s\n", e.what());
    return 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "statelm: internal error: %s\n", e.what());
    return 2;
  }
}
