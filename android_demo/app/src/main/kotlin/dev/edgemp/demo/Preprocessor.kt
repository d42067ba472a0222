package dev.edgemp.demo

import android.graphics.Bitmap
import android.graphics.Canvas
import android.graphics.Color
import android.graphics.Paint
import android.graphics.Rect
import java.nio.ByteBuffer

// A picture -> the model input, following the manifest's preprocessing: the resize policy here (stretch,
// center-crop or letterbox with black bars, as edgemp's calibration did), then InputEncoder for color, scale,
// mean/std, layout and int8 quantization. Android's bilinear filter is close to, not bit-identical with, Pillow's
// when the picture must be scaled; pictures already at the model size are encoded exactly as in calibration.
object Preprocessor {
    fun toInput(picture: Bitmap, pre: Preprocessing, input: TensorSpec): ByteBuffer {
        val sized = resize(picture.copy(Bitmap.Config.ARGB_8888, false), pre.width, pre.height, pre.resize)
        val pixels = IntArray(pre.width * pre.height)
        sized.getPixels(pixels, 0, pre.width, 0, 0, pre.width, pre.height)
        return InputEncoder.encode(pixels, pre, input)
    }

    private fun resize(src: Bitmap, w: Int, h: Int, policy: String): Bitmap {
        if (src.width == w && src.height == h) return src
        val out = Bitmap.createBitmap(w, h, Bitmap.Config.ARGB_8888)
        val canvas = Canvas(out)
        canvas.drawColor(Color.BLACK)
        val paint = Paint(Paint.FILTER_BITMAP_FLAG)
        when (policy) {
            "center-crop" -> {  // scale the short side to fit, crop the center
                val scale = maxOf(w.toFloat() / src.width, h.toFloat() / src.height)
                val cw = (w / scale).toInt()
                val ch = (h / scale).toInt()
                val left = (src.width - cw) / 2
                val top = (src.height - ch) / 2
                canvas.drawBitmap(src, Rect(left, top, left + cw, top + ch), Rect(0, 0, w, h), paint)
            }
            "letterbox" -> {  // fit inside, pad with zeros
                val scale = minOf(w.toFloat() / src.width, h.toFloat() / src.height)
                val dw = (src.width * scale).toInt()
                val dh = (src.height * scale).toInt()
                val left = (w - dw) / 2
                val top = (h - dh) / 2
                canvas.drawBitmap(src, Rect(0, 0, src.width, src.height), Rect(left, top, left + dw, top + dh), paint)
            }
            else -> canvas.drawBitmap(src, Rect(0, 0, src.width, src.height), Rect(0, 0, w, h), paint)
        }
        return out
    }
}
