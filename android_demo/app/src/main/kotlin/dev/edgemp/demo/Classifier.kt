package dev.edgemp.demo

import android.content.res.AssetManager
import android.os.SystemClock
import org.tensorflow.lite.Interpreter
import java.io.FileInputStream
import java.nio.ByteBuffer
import java.nio.ByteOrder
import java.nio.MappedByteBuffer
import java.nio.channels.FileChannel
import java.security.MessageDigest

class Prediction(val label: String, val score: Float)

class Result(val top: List<Prediction>, val medianMs: Double, val runs: Int)

// Loads the bundle's default model from assets (after checking its sha256 against the manifest), runs it with
// LiteRT and dequantizes int8 outputs with the output's scale/zero-point from the manifest.
class Classifier(assets: AssetManager, private val manifest: BundleManifest, threads: Int = 4) : AutoCloseable {
    private val interpreter: Interpreter

    init {
        val model = mapModel(assets, "edgemp/" + manifest.model.file)
        val digest = sha256(model)
        if (digest != manifest.model.sha256) {
            throw IllegalStateException("${manifest.model.file}: sha256 $digest does not match the manifest; re-copy the bundle")
        }
        interpreter = Interpreter(model, Interpreter.Options().setNumThreads(threads))
    }

    fun classify(input: ByteBuffer, runs: Int = 20, top: Int = 3): Result {
        val spec = manifest.model.outputs[0]
        val output = ByteBuffer.allocateDirect(spec.elementCount * spec.bytesPerElement).order(ByteOrder.nativeOrder())
        interpreter.run(input, output)  // warm-up, and the result shown
        val times = DoubleArray(runs)
        for (i in 0 until runs) {
            input.rewind()
            output.rewind()
            val t0 = SystemClock.elapsedRealtimeNanos()
            interpreter.run(input, output)
            times[i] = (SystemClock.elapsedRealtimeNanos() - t0) / 1e6
        }
        times.sort()
        val scores = softmaxIfLogits(dequantize(output, spec))
        val ranked = scores.indices.sortedByDescending { scores[it] }.take(top)
        val names = manifest.labels
        return Result(ranked.map { Prediction(if (it < names.size) names[it] else "class $it", scores[it]) },
            times[runs / 2], runs)
    }

    private fun dequantize(buffer: ByteBuffer, spec: TensorSpec): FloatArray {
        buffer.rewind()
        val q = spec.quantization
        return FloatArray(spec.elementCount) {
            when (spec.dtype) {
                "float32" -> buffer.float
                "int8" -> (buffer.get().toInt() - q!!.zeroPoint) * q.scale
                "uint8" -> ((buffer.get().toInt() and 0xFF) - q!!.zeroPoint) * q.scale
                "int16" -> (buffer.short.toInt() - q!!.zeroPoint) * q.scale
                else -> throw IllegalArgumentException("output dtype ${spec.dtype} is not handled")
            }
        }
    }

    private fun softmaxIfLogits(x: FloatArray): FloatArray {
        val isProbability = x.all { it >= 0f } && Math.abs(x.sum() - 1f) < 1e-2f
        if (isProbability) return x
        val max = x.maxOrNull() ?: 0f
        val e = x.map { Math.exp((it - max).toDouble()) }
        val sum = e.sum()
        return FloatArray(x.size) { (e[it] / sum).toFloat() }
    }

    override fun close() = interpreter.close()

    companion object {
        fun mapModel(assets: AssetManager, path: String): MappedByteBuffer {
            // needs the .tflite stored uncompressed in the APK: see androidResources.noCompress in app/build.gradle.kts
            assets.openFd(path).use { fd ->
                FileInputStream(fd.fileDescriptor).channel.use { ch ->
                    return ch.map(FileChannel.MapMode.READ_ONLY, fd.startOffset, fd.declaredLength)
                }
            }
        }

        fun sha256(buffer: ByteBuffer): String {
            val md = MessageDigest.getInstance("SHA-256")
            md.update(buffer.duplicate())
            return md.digest().joinToString("") { String.format("%02x", it) }
        }
    }
}
