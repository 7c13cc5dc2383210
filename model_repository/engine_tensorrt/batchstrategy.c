/*
 * Custom batching strategy for the GPU engine: Triton's dynamic batcher never forms a batch that no
 * TensorRT optimization profile holds.
 *
 * Why: Triton's dynamic batcher merges requests of equal shape (the engine's inputs are not ragged)
 * up to the model's max_batch_size rows, whatever their width. The engine's profiles are capped by a
 * token budget per execution, so a long bucket holds fewer rows (e.g. 16 x 8192) than a short one
 * (64 x 512). The TensorRT backend fails every request of a batch that no profile holds. This library
 * adds the missing rule: a request joins the pending batch only while the batch stays within
 *   rows <= the row limit of the profile holding its width  (parameter batch_rows_by_width), and
 *   rows x width <= the token budget per execution           (parameter batch_max_tokens).
 * The first request of a batch is always taken: refusing it would leave the batcher with nothing to
 * send (Triton 2.51-2.59 then retries the same request forever). A request that alone exceeds every
 * profile (only a direct call to the engine can send one) therefore runs alone and fails alone.
 *
 * The rule is exact only if Triton never grows a batch behind the strategy's back. Two paths in
 * Triton core do that for batches it did not mark saturated: a payload waiting for an instance keeps
 * growing (the strategy's state is reset first), and an instance merges queued payloads when
 * max_queue_delay_microseconds > 0. The repository therefore lists every batch size as preferred
 * and sets no queue delay: every batch then leaves the batcher saturated (docs/gpu.md, "Batches
 * that fit a profile"; tests/test_gpu_shaped.py proves it against the real server).
 *
 * Triton finds this library as batchstrategy.so in the model's directory. ABI: the five
 * TRITONBACKEND_ModelBatch* functions of tritonbackend.h (Triton core r24.10 and r25.06 alike); the
 * few Triton functions used are declared below and resolved from the server process when it loads
 * the library. Built by `rerank-build repository --target gpu` with the system C compiler.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct TRITONSERVER_Error TRITONSERVER_Error;
typedef struct TRITONSERVER_Message TRITONSERVER_Message;
typedef struct TRITONBACKEND_Model TRITONBACKEND_Model;
typedef struct TRITONBACKEND_Request TRITONBACKEND_Request;
typedef struct TRITONBACKEND_Input TRITONBACKEND_Input;
typedef struct TRITONBACKEND_Batcher TRITONBACKEND_Batcher;

/* Values of TRITONSERVER_Error_Code and TRITONSERVER_LogLevel (C enums, passed as int). */
enum { ERROR_INTERNAL = 1, ERROR_INVALID_ARG = 3 };
enum { LOG_INFO = 0, LOG_ERROR = 2 };

extern TRITONSERVER_Error* TRITONSERVER_ErrorNew(int code, const char* msg);
extern void TRITONSERVER_ErrorDelete(TRITONSERVER_Error* error);
extern TRITONSERVER_Error* TRITONSERVER_LogMessage(int level, const char* filename, const int line, const char* msg);
extern TRITONSERVER_Error* TRITONSERVER_MessageSerializeToJson(TRITONSERVER_Message* message, const char** base,
                                                              size_t* byte_size);
extern TRITONSERVER_Error* TRITONSERVER_MessageDelete(TRITONSERVER_Message* message);
extern TRITONSERVER_Error* TRITONBACKEND_ModelConfig(TRITONBACKEND_Model* model, const uint32_t config_version,
                                                     TRITONSERVER_Message** model_config);
extern TRITONSERVER_Error* TRITONBACKEND_RequestInput(TRITONBACKEND_Request* request, const char* name,
                                                      TRITONBACKEND_Input** input);
extern TRITONSERVER_Error* TRITONBACKEND_InputProperties(TRITONBACKEND_Input* input, const char** name,
                                                         int* datatype, const int64_t** shape, uint32_t* dims_count,
                                                         uint64_t* byte_size, uint32_t* buffer_count);

#define MAX_LIMITS 32
#define INPUT_NAME "input_ids"

/* Per model, read-only once loaded: the token budget and, per profile, its widest width and rows. */
typedef struct {
  int64_t max_tokens;
  int count;
  int64_t width[MAX_LIMITS]; /* increasing */
  int64_t rows[MAX_LIMITS];
} Limits;

/* Per pending batch. */
typedef struct {
  const Limits* limits;
  int64_t rows;
  int64_t width;
} Batch;

static void log_line(int level, int line, const char* msg) {
  TRITONSERVER_Error* err = TRITONSERVER_LogMessage(level, "batchstrategy.c", line, msg);
  if (err != NULL) TRITONSERVER_ErrorDelete(err);
}

/* The string value of parameter `key` in the model config's JSON ({"key":{"string_value":"..."}}),
 * copied into out; false if absent. */
static bool parameter(const char* json, size_t size, const char* key, char* out, size_t out_size) {
  char quoted[128];
  snprintf(quoted, sizeof quoted, "\"%s\"", key);
  const char* end = json + size;
  const char* at = strstr(json, "\"parameters\"");
  if (at == NULL) return false;
  at = strstr(at, quoted);
  if (at == NULL || at >= end) return false;
  at = strstr(at + strlen(quoted), "\"string_value\"");
  if (at == NULL || at >= end) return false;
  at = strchr(at + strlen("\"string_value\""), ':');
  if (at == NULL) return false;
  at = strchr(at, '"');
  if (at == NULL) return false;
  const char* close = strchr(++at, '"');
  if (close == NULL || (size_t)(close - at) >= out_size) return false;
  memcpy(out, at, (size_t)(close - at));
  out[close - at] = '\0';
  return true;
}

static bool positive(const char* text, int64_t* value) {
  char* rest = NULL;
  long long parsed = strtoll(text, &rest, 10);
  if (rest == text || parsed < 1) return false;
  *value = (int64_t)parsed;
  return true;
}

/* "128:64,512:64,2048:64,4096:32,8192:16": up to width 128, 64 rows; ... (widths increasing). */
static bool parse_rows_by_width(const char* text, Limits* limits) {
  limits->count = 0;
  const char* at = text;
  while (*at != '\0') {
    char* rest = NULL;
    long long width = strtoll(at, &rest, 10);
    if (rest == at || *rest != ':' || limits->count == MAX_LIMITS) return false;
    at = rest + 1;
    long long rows = strtoll(at, &rest, 10);
    if (rest == at || width < 1 || rows < 1) return false;
    if (limits->count > 0 && width <= limits->width[limits->count - 1]) return false;
    limits->width[limits->count] = width;
    limits->rows[limits->count] = rows;
    limits->count++;
    at = rest;
    if (*at == ',') at++;
    else if (*at != '\0') return false;
  }
  return limits->count > 0;
}

/* Rows the profile holding `width` takes; 0 when no profile is that wide. */
static int64_t rows_at(const Limits* limits, int64_t width) {
  for (int i = 0; i < limits->count; i++) {
    if (width <= limits->width[i]) return limits->rows[i];
  }
  return 0;
}

TRITONSERVER_Error* TRITONBACKEND_ModelBatcherInitialize(TRITONBACKEND_Batcher** batcher, TRITONBACKEND_Model* model) {
  TRITONSERVER_Message* config = NULL;
  TRITONSERVER_Error* err = TRITONBACKEND_ModelConfig(model, 1, &config);
  if (err != NULL) return err;
  const char* json = NULL;
  size_t size = 0;
  err = TRITONSERVER_MessageSerializeToJson(config, &json, &size);
  if (err != NULL) {
    TRITONSERVER_MessageDelete(config);
    return err;
  }
  Limits* limits = calloc(1, sizeof(Limits));
  char tokens[64], rows[1024];
  bool ok = limits != NULL && parameter(json, size, "batch_max_tokens", tokens, sizeof tokens) &&
            positive(tokens, &limits->max_tokens) &&
            parameter(json, size, "batch_rows_by_width", rows, sizeof rows) && parse_rows_by_width(rows, limits);
  TRITONSERVER_MessageDelete(config);
  if (!ok) {
    free(limits);
    return TRITONSERVER_ErrorNew(ERROR_INVALID_ARG,
                                 "batchstrategy.so needs the model parameters batch_max_tokens (a positive "
                                 "integer) and batch_rows_by_width (e.g. \"512:64,8192:16\", widths increasing)");
  }
  char msg[1200];
  snprintf(msg, sizeof msg, "batch strategy: at most %lld tokens per execution; rows by width %s",
           (long long)limits->max_tokens, rows);
  log_line(LOG_INFO, __LINE__, msg);
  *batcher = (TRITONBACKEND_Batcher*)limits;
  return NULL;
}

TRITONSERVER_Error* TRITONBACKEND_ModelBatcherFinalize(TRITONBACKEND_Batcher* batcher) {
  free(batcher);
  return NULL;
}

TRITONSERVER_Error* TRITONBACKEND_ModelBatchInitialize(const TRITONBACKEND_Batcher* batcher, void** userp) {
  Batch* batch = calloc(1, sizeof(Batch));
  if (batch == NULL) return TRITONSERVER_ErrorNew(ERROR_INTERNAL, "batchstrategy.so: out of memory");
  batch->limits = (const Limits*)batcher;
  *userp = batch;
  return NULL;
}

TRITONSERVER_Error* TRITONBACKEND_ModelBatchFinalize(void* userp) {
  free(userp);
  return NULL;
}

TRITONSERVER_Error* TRITONBACKEND_ModelBatchIncludeRequest(TRITONBACKEND_Request* request, void* userp,
                                                           bool* should_include) {
  Batch* batch = (Batch*)userp;
  TRITONBACKEND_Input* input = NULL;
  const int64_t* shape = NULL;
  uint32_t dims = 0;
  TRITONSERVER_Error* err = TRITONBACKEND_RequestInput(request, INPUT_NAME, &input);
  if (err == NULL) err = TRITONBACKEND_InputProperties(input, NULL, NULL, &shape, &dims, NULL, NULL);
  if (err != NULL || dims != 2) {
    /* Not a [rows, width] request: the engine refuses it; never batch it with others. */
    if (err != NULL) TRITONSERVER_ErrorDelete(err);
    *should_include = (batch->rows == 0);
    if (*should_include) batch->rows = -1; /* nothing may join it */
    return NULL;
  }
  int64_t rows = shape[0], width = shape[1];
  if (batch->rows == 0) {
    *should_include = true;
  } else if (batch->rows < 0) {
    *should_include = false;
  } else {
    int64_t total = batch->rows + rows;
    int64_t wide = width > batch->width ? width : batch->width;
    int64_t limit = rows_at(batch->limits, wide);
    *should_include = total <= limit && total * wide <= batch->limits->max_tokens;
  }
  if (*should_include) {
    batch->rows += rows;
    if (width > batch->width) batch->width = width;
  }
  return NULL;
}
