// Opening a model folder: config.json -> ModelSpec, then the checkpoint, checked tensor by
// tensor against the spec before anything is computed.
#pragma once

#include <optional>
#include <string>

#include "model/checkpoint.h"
#include "model/model_spec.h"

namespace statelm {

struct ModelFiles {
  ModelSpec spec;
  std::optional<Checkpoint> checkpoint;  // empty when opened without weights
};

// `dir` holds config.json (and model.safetensors[.index.json] when require_weights).
// A path to a config.json file itself is accepted too (spec only).
ModelFiles open_model_files(const std::string& dir, bool require_weights = true);

}  // namespace statelm
