package dev.edgemp.demo

import android.graphics.Bitmap
import android.graphics.BitmapFactory
import android.graphics.ImageDecoder
import android.net.Uri
import android.os.Build
import android.os.Bundle
import android.widget.Button
import android.widget.ImageView
import android.widget.TextView
import androidx.activity.result.PickVisualMediaRequest
import androidx.activity.result.contract.ActivityResultContracts
import androidx.appcompat.app.AppCompatActivity
import java.util.concurrent.Executors

// Loads the edgemp bundle from assets/edgemp/, classifies assets/sample.png (or a picked photo) and shows the top
// classes, the on-device latency, and what edgemp measured on the host before shipping.
class MainActivity : AppCompatActivity() {
    private val worker = Executors.newSingleThreadExecutor()
    private lateinit var manifest: BundleManifest
    private var classifier: Classifier? = null

    private val pick = registerForActivityResult(ActivityResultContracts.PickVisualMedia()) { uri: Uri? ->
        if (uri != null) run(decode(uri))
    }

    override fun onCreate(savedInstanceState: Bundle?) {
        super.onCreate(savedInstanceState)
        setContentView(R.layout.activity_main)
        findViewById<Button>(R.id.pick).setOnClickListener {
            pick.launch(PickVisualMediaRequest(ActivityResultContracts.PickVisualMedia.ImageOnly))
        }
        worker.execute {
            try {
                manifest = ManifestReader.parse(assets.open("edgemp/manifest.json").bufferedReader().readText())
                classifier = Classifier(assets, manifest)
                val m = manifest.model
                val acc = manifest.validation.accuracy
                val host = if (acc?.top1 != null) "host top-1 %.2f%% (float %.2f%%)".format(100 * acc.top1, 100 * (acc.floatTop1 ?: 0.0)) else "no labelled validation"
                runOnUiThread {
                    findViewById<TextView>(R.id.model).text = getString(R.string.model_info, m.file, m.precision,
                        m.inputs[0].dtype, if (manifest.validation.passed) "passed" else "FAILED", host)
                }
                run(BitmapFactory.decodeStream(assets.open("sample.png")))
            } catch (e: Exception) {
                runOnUiThread { findViewById<TextView>(R.id.result).text = getString(R.string.error, e.message) }
            }
        }
    }

    private fun run(picture: Bitmap) {
        worker.execute {
            val pre = manifest.preprocessing
                ?: throw IllegalStateException("the bundle records no image preprocessing: this model takes arrays")
            val result = classifier!!.classify(Preprocessor.toInput(picture, pre, manifest.model.inputs[0]))
            val lines = result.top.joinToString("\n") { "%-14s %5.1f%%".format(it.label, 100 * it.score) }
            runOnUiThread {
                findViewById<ImageView>(R.id.picture).setImageBitmap(picture)
                findViewById<TextView>(R.id.result).text = getString(R.string.result, lines, result.medianMs, result.runs)
            }
        }
    }

    private fun decode(uri: Uri): Bitmap =
        if (Build.VERSION.SDK_INT >= 28) ImageDecoder.decodeBitmap(ImageDecoder.createSource(contentResolver, uri)) { d, _, _ ->
            d.allocator = ImageDecoder.ALLOCATOR_SOFTWARE
        } else contentResolver.openInputStream(uri).use { BitmapFactory.decodeStream(it) }

    override fun onDestroy() {
        worker.execute { classifier?.close() }
        worker.shutdown()
        super.onDestroy()
    }
}
