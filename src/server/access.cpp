#include "server/access.h"

#include <cctype>
#include <cstdio>
#include <random>

#include "core/error.h"

namespace statelm::server {

bool bearer_matches(std::string_view authorization, std::string_view key) {
  constexpr std::string_view kScheme = "Bearer ";
  if (key.empty() || authorization.size() < kScheme.size()) return false;
  // The scheme is case-insensitive (RFC 7235) and not secret.
  for (size_t i = 0; i < kScheme.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(authorization[i])) != std::tolower(static_cast<unsigned char>(kScheme[i]))) return false;
  const std::string_view given = authorization.substr(kScheme.size());
  // Every byte of the given token is compared (against the key, cycled), whatever matches.
  unsigned diff = given.size() != key.size();
  for (size_t i = 0; i < given.size(); ++i) diff |= static_cast<unsigned char>(given[i]) ^ static_cast<unsigned char>(key[i % key.size()]);
  return diff == 0;
}

std::string request_id_from(std::string_view client_value) {
  bool sane = !client_value.empty() && client_value.size() <= 128;
  for (char c : client_value) sane = sane && c > 0x20 && c < 0x7f;
  if (sane) return std::string(client_value);
  static thread_local std::mt19937_64 rng{std::random_device{}()};
  char buf[32];
  std::snprintf(buf, sizeof buf, "req-%016llx%08llx", static_cast<unsigned long long>(rng()),
                static_cast<unsigned long long>(rng() & 0xffffffffu));
  return buf;
}

RequestContext& current_request() {
  static thread_local RequestContext context;
  return context;
}

std::string request_log_line(const RequestContext& c, const std::string& method, const std::string& path, int status) {
  const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - c.start).count();
  char duration[32];
  std::snprintf(duration, sizeof duration, "%.1f ms", ms);
  std::string line = str_cat("request ", c.id, " ", method, " ", path, " ", status);
  if (c.prompt_tokens >= 0) line += str_cat(" prompt_tokens=", c.prompt_tokens, " completion_tokens=", c.completion_tokens);
  return line + " " + duration;
}

}  // namespace statelm::server
