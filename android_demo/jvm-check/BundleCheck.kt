// Runs the app's own ManifestReader and InputEncoder on the JVM (no Android SDK here), with Android's org.json:
// reads a bundle's manifest.json and a picture already at the model's size, writes the input buffer the app would
// hand to LiteRT, and prints what the app read. tests/test_android_demo.py compares the buffer with edgemp's
// Python preprocessing and quantization, byte for byte.
import dev.edgemp.demo.InputEncoder
import dev.edgemp.demo.ManifestReader
import java.io.File
import java.nio.ByteBuffer
import javax.imageio.ImageIO

fun main(args: Array<String>) {
    val manifest = ManifestReader.parse(File(args[0]).readText())
    val image = ImageIO.read(File(args[1]))
    val pre = manifest.preprocessing ?: throw IllegalStateException("no preprocessing in the manifest")
    val w = image.width
    val h = image.height
    val argb = IntArray(w * h)
    for (y in 0 until h) for (x in 0 until w) {
        argb[y * w + x] = if (image.raster.numBands == 1) {
            // as Android's BitmapFactory decodes a grayscale PNG: R = G = B = the stored value (no gamma change)
            val v = image.raster.getSample(x, y, 0)
            (0xFF shl 24) or (v shl 16) or (v shl 8) or v
        } else {
            (0xFF shl 24) or (image.raster.getSample(x, y, 0) shl 16) or (image.raster.getSample(x, y, 1) shl 8) or
                image.raster.getSample(x, y, 2)
        }
    }
    val buffer: ByteBuffer = InputEncoder.encode(argb, pre, manifest.model.inputs[0])
    val bytes = ByteArray(buffer.remaining())
    buffer.get(bytes)
    File(args[2]).writeBytes(bytes)
    val acc = manifest.validation.accuracy
    println("model=${manifest.model.file} precision=${manifest.model.precision} device=${manifest.device} " +
        "input=${manifest.model.inputs[0].dtype} labels=${manifest.labels.size} passed=${manifest.validation.passed} " +
        "top1=${acc?.top1} bytes=${bytes.size}")
}
