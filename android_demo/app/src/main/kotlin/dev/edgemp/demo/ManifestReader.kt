package dev.edgemp.demo

import org.json.JSONArray
import org.json.JSONObject

// The parts of edgemp's bundle manifest (manifest.json, schema 1.x) this app reads. Each parse function reads one
// object of the published schema (edgemp package --schema); tests/test_android_demo.py checks every key read here
// against that schema and a real bundle, and runs this file on the JVM against edgemp's own preprocessing.

class Quantization(val scale: Float, val zeroPoint: Int)

class TensorSpec(
    val name: String,
    val shape: IntArray,
    val dtype: String,
    val layout: String?,
    val quantization: Quantization?
) {
    val elementCount: Int get() = shape.fold(1) { acc, d -> acc * maxOf(d, 1) }

    val bytesPerElement: Int
        get() = when (dtype) {
            "float32", "int32" -> 4
            "float16", "int16" -> 2
            "int8", "uint8", "bool" -> 1
            else -> throw IllegalArgumentException("tensor $name has dtype $dtype, which this app does not handle")
        }
}

class ModelEntry(
    val file: String,
    val format: String,
    val precision: String,
    val sha256: String,
    val bytes: Long,
    val inputs: List<TensorSpec>,
    val outputs: List<TensorSpec>
)

class Preprocessing(
    val height: Int,
    val width: Int,
    val resize: String,
    val color: String,
    val scale: Float,
    val mean: FloatArray,
    val std: FloatArray,
    val layout: String
)

class Accuracy(val top1: Double?, val floatTop1: Double?)

class ValidationSummary(val passed: Boolean, val accuracy: Accuracy?, val hostLatencyMs: Double?)

class BundleManifest(
    val schemaVersion: String,
    val device: String,
    val model: ModelEntry,
    val preprocessing: Preprocessing?,
    val labels: List<String>,
    val validation: ValidationSummary
)

object ManifestReader {
    fun parse(text: String): BundleManifest {
        val root = JSONObject(text)
        val version = root.getString("schema_version")
        if (!version.startsWith("1.")) {
            throw IllegalArgumentException("manifest schema $version: this app reads schema 1.x; update the app")
        }
        val defaultFile = root.getString("default_model")
        val models = root.getJSONArray("models")
        var model: ModelEntry? = null
        for (i in 0 until models.length()) {
            val m = parseModel(models.getJSONObject(i))
            if (m.file == defaultFile) model = m
        }
        if (model == null) throw IllegalArgumentException("default model $defaultFile is not among the bundle's models")
        if (model.format != "tflite") throw IllegalArgumentException("${model.file} is ${model.format}; this app runs .tflite")
        val pre = if (root.isNull("preprocessing")) null else parsePreprocessing(root.getJSONObject("preprocessing"))
        val labels = if (root.isNull("labels")) emptyList() else parseLabels(root.getJSONObject("labels"))
        return BundleManifest(version, root.getString("device"), model, pre, labels,
            parseValidation(root.getJSONObject("validation")))
    }

    fun parseModel(o: JSONObject): ModelEntry {
        return ModelEntry(o.getString("file"), o.getString("format"), o.getString("precision"), o.getString("sha256"),
            o.getLong("bytes"), tensors(o.getJSONArray("inputs")), tensors(o.getJSONArray("outputs")))
    }

    private fun tensors(a: JSONArray): List<TensorSpec> = (0 until a.length()).map { parseTensor(a.getJSONObject(it)) }

    fun parseTensor(o: JSONObject): TensorSpec {
        val shape = o.getJSONArray("shape")
        val dims = IntArray(shape.length()) { shape.getInt(it) }
        val layout = if (o.isNull("layout")) null else o.getString("layout")
        val quant = if (o.isNull("quantization")) null else parseQuantization(o.getJSONObject("quantization"))
        return TensorSpec(o.getString("name"), dims, o.getString("dtype"), layout, quant)
    }

    fun parseQuantization(o: JSONObject): Quantization =
        Quantization(o.getDouble("scale").toFloat(), o.getInt("zero_point"))

    fun parsePreprocessing(o: JSONObject): Preprocessing {
        val size = o.getJSONArray("size")
        return Preprocessing(size.getInt(0), size.getInt(1), o.getString("resize"), o.getString("color"),
            o.getDouble("scale").toFloat(), floats(o.getJSONArray("mean")), floats(o.getJSONArray("std")),
            o.getString("layout"))
    }

    private fun floats(a: JSONArray): FloatArray = FloatArray(a.length()) { a.getDouble(it).toFloat() }

    fun parseLabels(o: JSONObject): List<String> {
        val classes = o.getJSONArray("classes")
        return (0 until classes.length()).map { classes.getString(it) }
    }

    fun parseValidation(o: JSONObject): ValidationSummary {
        val accuracy = if (o.isNull("accuracy")) null else parseAccuracy(o.getJSONObject("accuracy"))
        val latency = if (o.isNull("host_latency_ms")) null else o.getDouble("host_latency_ms")
        return ValidationSummary(o.getBoolean("passed"), accuracy, latency)
    }

    fun parseAccuracy(o: JSONObject): Accuracy {
        val top1 = if (o.isNull("top1")) null else o.getDouble("top1")
        val floatTop1 = if (o.isNull("float_top1")) null else o.getDouble("float_top1")
        return Accuracy(top1, floatTop1)
    }
}
