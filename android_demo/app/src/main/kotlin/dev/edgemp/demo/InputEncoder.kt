package dev.edgemp.demo

import java.nio.ByteBuffer
import java.nio.ByteOrder

// Pixels -> the model's input buffer, exactly as edgemp calibrated the model: color conversion (grayscale with
// Pillow's integer luma formula), value = (pixel * scale - mean[c]) / std[c] in float32, the input's layout, then
// quantization with the input's scale/zero-point (round half to even, as numpy does) for int8/uint8/int16 inputs.
// Plain Kotlin (no Android classes) so tests can run it on the JVM against edgemp's Python preprocessing.
object InputEncoder {
    /** `argb`: pre.width x pre.height pixels, row-major, as Bitmap.getPixels returns them. */
    fun encode(argb: IntArray, pre: Preprocessing, input: TensorSpec): ByteBuffer {
        val h = pre.height
        val w = pre.width
        require(argb.size == w * h) { "expected ${w}x$h pixels, got ${argb.size}" }
        val channels = if (pre.color == "grayscale") 1 else 3
        val nhwc = pre.layout == "NHWC"
        val expected = if (nhwc) intArrayOf(1, h, w, channels) else intArrayOf(1, channels, h, w)
        require(input.shape.contentEquals(expected)) {
            "input ${input.name} has shape ${input.shape.joinToString()}; the manifest preprocessing gives ${expected.joinToString()}"
        }
        val buffer = ByteBuffer.allocateDirect(input.elementCount * input.bytesPerElement).order(ByteOrder.nativeOrder())
        if (nhwc) {
            for (y in 0 until h) for (x in 0 until w) for (c in 0 until channels) put(buffer, value(argb[y * w + x], c, pre), input)
        } else {
            for (c in 0 until channels) for (y in 0 until h) for (x in 0 until w) put(buffer, value(argb[y * w + x], c, pre), input)
        }
        buffer.rewind()
        return buffer
    }

    fun value(pixel: Int, c: Int, pre: Preprocessing): Float {
        val r = (pixel shr 16) and 0xFF
        val g = (pixel shr 8) and 0xFF
        val b = pixel and 0xFF
        val v = when (pre.color) {
            "grayscale" -> (r * 19595 + g * 38470 + b * 7471 + 0x8000) shr 16
            "bgr" -> if (c == 0) b else if (c == 1) g else r
            else -> if (c == 0) r else if (c == 1) g else b
        }
        val mean = pre.mean[if (pre.mean.size == 1) 0 else c]
        val std = pre.std[if (pre.std.size == 1) 0 else c]
        return (v.toFloat() * pre.scale - mean) / std
    }

    private fun put(buffer: ByteBuffer, v: Float, input: TensorSpec) {
        val q = input.quantization
        when (input.dtype) {
            "float32" -> buffer.putFloat(v)
            "int8" -> buffer.put(quantize(v, q!!, -128, 127).toByte())
            "uint8" -> buffer.put(quantize(v, q!!, 0, 255).toByte())
            "int16" -> buffer.putShort(quantize(v, q!!, -32768, 32767).toShort())
            else -> throw IllegalArgumentException("input dtype ${input.dtype} is not an image input this app fills")
        }
    }

    fun quantize(v: Float, q: Quantization, lo: Int, hi: Int): Int {
        val x = Math.rint((v / q.scale + q.zeroPoint).toDouble())
        return x.coerceIn(lo.toDouble(), hi.toDouble()).toInt()
    }
}
