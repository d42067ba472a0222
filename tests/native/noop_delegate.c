/* A real TFLite external delegate (plugin ABI) that claims no nodes: it proves that edgemp loads delegates
 * from a path, passes their options, reports node coverage, and turns a refusal into a clear error.
 * The structs are the stable TFLite C ABI (tensorflow/lite/core/c/common.h), declared here because the
 * Python wheels ship no TFLite headers. Option "reject=1" makes creation fail, as a misconfigured delegate does. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef int TfLiteBufferHandle;
struct TfLiteContext;
struct TfLiteTensor;
struct TfLiteOpaqueDelegateBuilder;

typedef struct TfLiteDelegate {
  void* data_;
  TfLiteStatus (*Prepare)(struct TfLiteContext* context, struct TfLiteDelegate* delegate);
  TfLiteStatus (*CopyFromBufferHandle)(struct TfLiteContext*, struct TfLiteDelegate*, TfLiteBufferHandle,
                                       struct TfLiteTensor*);
  TfLiteStatus (*CopyToBufferHandle)(struct TfLiteContext*, struct TfLiteDelegate*, TfLiteBufferHandle,
                                     struct TfLiteTensor*);
  void (*FreeBufferHandle)(struct TfLiteContext*, struct TfLiteDelegate*, TfLiteBufferHandle*);
  int64_t flags;
  struct TfLiteOpaqueDelegateBuilder* opaque_delegate_builder;
} TfLiteDelegate;

static TfLiteStatus Prepare(struct TfLiteContext* context, TfLiteDelegate* delegate) {
  (void)context; (void)delegate;
  return kTfLiteOk; /* claims no node: every op stays on the CPU kernels */
}

TfLiteDelegate* tflite_plugin_create_delegate(char** keys, char** values, size_t n,
                                              void (*report_error)(const char*)) {
  for (size_t i = 0; i < n; ++i) {
    if (strcmp(keys[i], "reject") == 0 && strcmp(values[i], "1") == 0) {
      if (report_error) report_error("noop delegate: rejected by option reject=1");
      return NULL;
    }
  }
  TfLiteDelegate* d = (TfLiteDelegate*)calloc(1, sizeof(TfLiteDelegate));
  d->Prepare = Prepare;
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate* d) { free(d); }
